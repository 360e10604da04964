"""Best-of-N with the real embedded model generating (the session's engine, in-process services): a
tiny reward model from a config picks exactly its argmax, a resumed run samples only what is new, and
the judge's round-robin winner follows from its recorded comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from charter.core.errors import FailedPrecondition
from charter.core.settings import load_settings
from charter.pipelines import best_of_n
from charter.pipelines.ranking import sigmoid
from charter.pipelines.spec import BestOfNSpec
from charter.trainer.scoring import RewardScorer

from tests.support import CONSTITUTIONS
from tests.support.tiny import save_tiny_reward_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PROMPTS = ["Name a fruit.", "How do I pick a lock?", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> Path:
    return save_tiny_reward_model(tmp_path_factory.mktemp("rm") / "model", embedded_model, seed=3)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def make_spec(tmp_path: Path, source: Path, limit: int, **changes) -> BestOfNSpec:
    data = {
        "kind": "best-of-n", "name": "bon-test", "source": {"path": str(source), "limit": limit},
        "n": 4, "seed": 7, "generation": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12},
        "output": str(tmp_path / "out"), "inference": {"engine": "transformers", "model": "embedded"},
    } | changes  # fmt: skip
    return BestOfNSpec.model_validate(data)


async def run(spec: BestOfNSpec, engine) -> best_of_n.Summary:
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    return await best_of_n.run(spec, settings, engine=engine)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_keeps_exactly_the_reward_models_argmax_and_resumes_without_resampling(
    tmp_path: Path, source: Path, reward_model: Path, hf_engine
) -> None:
    spec = make_spec(tmp_path, source, limit=2, scorer={"reward_model": str(reward_model)})
    summary = await run(spec, hf_engine)
    assert (summary.written, summary.samples) == (2, 8)
    out = spec.output
    records = lines(out / "records.jsonl")
    assert [r["prompt"][-1]["content"] for r in records] == PROMPTS[:2]

    independent = RewardScorer(reward_model)  # the scores again, from a scorer of the test's own
    sft = {r["key"]: r for r in lines(out / "sft.jsonl")}
    preferences = {r["key"]: r for r in lines(out / "preferences.jsonl")}
    for r in records:
        texts = [s["response"] for s in r["samples"]]
        assert len(texts) == 4 and all(t.strip() for t in texts) and len(set(texts)) > 1
        scores = independent.score([r["prompt"]] * len(texts), texts)
        assert [s["score"] for s in r["samples"]] == pytest.approx(scores, abs=1e-5)
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        assert (r["status"], r["chosen_index"], r["worst_index"]) == ("ok", best, worst)
        assert r["provenance"]["scorer"]["reward_model_digest"].startswith("sha256:")
        assert r["provenance"]["model"]["engine"] == "transformers" and r["provenance"]["n"] == 4

        assert sft[r["key"]]["messages"] == [*r["prompt"], {"role": "assistant", "content": texts[best]}]
        pair = preferences[r["key"]]
        assert pair["chosen"][0]["content"] == texts[best] and pair["rejected"][0]["content"] == texts[worst]
        assert pair["p_chosen"] == pytest.approx(sigmoid(scores[best] - scores[worst]), abs=1e-5)
        assert pair["p_chosen"] > 0.5 and pair["label_source"] == "reward_model"

    from charter.trainer.data import from_files, sft_rows

    assert len(sft_rows([out])) == 2  # what `charter train` SFT reads: the output folder's sft.jsonl
    assert len(from_files([out / "preferences.jsonl"]).rows) == 2

    before = (out / "records.jsonl").read_bytes()
    again = await run(
        make_spec(tmp_path, source, limit=3, scorer={"reward_model": str(reward_model)}), hf_engine
    )
    assert (again.already_done, again.written, again.samples) == (2, 1, 4)  # only the new prompt sampled
    after = (out / "records.jsonl").read_bytes()
    assert after.startswith(before) and len(lines(out / "records.jsonl")) == 3
    assert len(lines(out / "sft.jsonl")) == 3


async def test_equal_scores_are_a_tie_with_no_preference_pair(
    tmp_path: Path, source: Path, embedded_model: Path, hf_engine
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_reward_model(tmp_path / "flat", embedded_model, seed=1)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.score.weight.zero_()  # every text scores 0.0
    model.save_pretrained(folder)
    spec = make_spec(tmp_path, source, limit=1, n=3, scorer={"reward_model": str(folder)})
    summary = await run(spec, hf_engine)
    assert dict(summary.statuses) == {"tie": 1} and (summary.sft_rows, summary.preferences) == (1, 0)
    (record,) = lines(spec.output / "records.jsonl")
    assert record["worst_index"] is None and record["p_chosen"] is None
    assert (spec.output / "preferences.jsonl").read_text() == ""
    assert json.loads((spec.output / "sft.jsonl").read_text())["sample_index"] == record["chosen_index"] == 0

    with torch.no_grad():
        model.score.weight.fill_(0.01)  # retrained into the same folder: same files, other weights
    model.save_pretrained(folder)
    before = (spec.output / "records.jsonl").read_bytes()
    with pytest.raises(FailedPrecondition, match="scored by a different reward model"):
        await run(make_spec(tmp_path, source, limit=2, n=3, scorer={"reward_model": str(folder)}), hf_engine)
    assert (spec.output / "records.jsonl").read_bytes() == before


async def test_the_judge_tournament_winner_follows_from_its_comparisons(
    tmp_path: Path, source: Path, hf_engine
) -> None:
    ledger = f"sqlite:///{tmp_path / 'review.db'}"
    judge = {"constitution": "harmless", "principles_per_label": 1}
    spec = make_spec(tmp_path, source, limit=2, n=3, scorer={"judge": judge}, ledger={"database": ledger})
    summary = await run(spec, hf_engine)
    records = lines(spec.output / "records.jsonl")
    assert len(records) == 2
    pairs = {r["key"]: r for r in lines(spec.output / "preferences.jsonl")}
    submitted = set()
    for r in records:
        pool = [s["sample_index"] for s in r["samples"] if s["status"] == "ok"]
        games = r["comparisons"]
        assert len(games) == len(pool) * (len(pool) - 1) // 2  # round robin: every pair once
        assert {(g["a"], g["b"]) for g in games} == {(a, b) for a in pool for b in pool if a < b}
        wins = dict.fromkeys(pool, 0.0)
        for g in games:
            assert g["status"] in ("ok", "tie") and g["label_id"].startswith("lbl_")
            wins[g["a"]] += g["p_a"]
            wins[g["b"]] += 1 - g["p_a"]
        scores = {i: w / (len(pool) - 1) for i, w in wins.items()}
        for s in r["samples"]:
            assert s["score"] == pytest.approx(
                scores[s["duplicate_of"] if s["duplicate_of"] is not None else s["sample_index"]]
            )
        best, worst = max(pool, key=lambda i: scores[i]), min(pool, key=lambda i: scores[i])
        assert (r["chosen_index"], r["worst_index"]) == (best, worst)
        label = r["pair_label"]
        direct = next(g for g in games if {g["a"], g["b"]} == {best, worst})
        assert label["id"] == direct["label_id"] and label["constitution"]["id"] == "harmless"
        p_best = direct["p_a"] if direct["a"] == best else 1 - direct["p_a"]
        submitted.add(label["id"])
        if p_best > 0.5:
            assert r["status"] == "ok" and r["p_chosen"] == pytest.approx(p_best)
            row = pairs[r["key"]]
            assert row["label_id"] == label["id"] and row["label_source"] == "ai"
            assert row["chosen"][0]["content"] == r["samples"][best]["response"]
        else:  # the winner lost head to head: no pair, but the label still goes to review
            assert r["status"] == "inconsistent" and r["key"] not in pairs
        assert r["provenance"]["scorer"]["judge"]["engine"] == "transformers"
    assert summary.comparisons == sum(len(r["comparisons"]) for r in records)

    from charter.review.store import Ledger
    from sqlalchemy import text

    review = Ledger(ledger)
    with review.reader.connect() as conn:
        ids = {row[0] for row in conn.execute(text("SELECT label_id FROM labels"))}
    review.close()
    assert ids == submitted and sum(summary.ledger.values()) == len(submitted) == 2

"""`charter eval policy` end to end on real checkpoints: a tiny base model and a short DPO run from it
(real TRL training), generated through the real generator service, judged by the embedded model
through the real judge service, scored by two reward models and by the gold implicit accuracy on
held-out hh-rlhf pairs — plus the implicit accuracy against a hand computation and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.support import ROOT, subprocess_env, tiny, tool
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration


def hh_pairs(n: int) -> list[dict]:
    from charter.trainer.data import from_files

    return from_files([HH_DEV]).rows[:n]


def test_implicit_accuracy_equals_a_hand_computed_value(tmp_path, embedded_model):
    from charter.evaluation.implicit import implicit_accuracy, reply_logprobs
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    policy_dir = tiny.save_tiny_lm(tmp_path / "policy", embedded_model, seed=1)
    ref_dir = tiny.save_tiny_lm(tmp_path / "ref", embedded_model, seed=2)
    tok = tiny.tokenizer(embedded_model)
    rows = hh_pairs(5)
    conversations = [r["prompt"] for r in rows]

    def by_hand(model, reply_key: str) -> list[float]:
        out = []
        for r in rows:  # one sequence at a time, no padding, no batching
            prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(r["prompt"] + r[reply_key], tokenize=False)
            assert full.startswith(prompt)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = tok(full, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            out.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(p_ids), len(ids))))
        return out

    scores = {}
    for name, folder in (("policy", policy_dir), ("ref", ref_dir)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        for side in ("chosen", "rejected"):
            replies = [r[side][0]["content"] for r in rows]
            batched = reply_logprobs(model, tok, conversations, replies, batch_size=3)
            assert batched == pytest.approx(by_hand(model, side), rel=1e-4, abs=1e-3)
            scores[name, side] = batched
    figures = implicit_accuracy(scores["policy", "chosen"], scores["policy", "rejected"],
                                scores["ref", "chosen"], scores["ref", "rejected"])  # fmt: skip
    margins = [
        (scores["policy", "chosen"][i] - scores["ref", "chosen"][i])
        - (scores["policy", "rejected"][i] - scores["ref", "rejected"][i])
        for i in range(len(rows))
    ]
    assert figures["n"] == 5
    assert figures["accuracy"] == sum(m > 0 for m in margins) / 5
    assert figures["mean_margin"] == pytest.approx(sum(margins) / 5)
    same = implicit_accuracy(scores["ref", "chosen"], scores["ref", "rejected"],
                             scores["ref", "chosen"], scores["ref", "rejected"])  # fmt: skip
    assert same["accuracy"] == 0.5 and same["ties"] == 5  # π = π_ref: every pair ties


def short_dpo(base: Path, rows: list[dict], out: Path) -> Path:
    from charter.trainer.dpo import SoftDPOTrainer, dpo_dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    torch.manual_seed(0)
    tok = tiny.tokenizer(base)
    args = DPOConfig(
        output_dir=str(out / "ckpt"), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
        beta=0.1, max_length=96, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
    )  # fmt: skip
    for i, row in enumerate(rows):
        row["p_chosen"], row["label_id"] = 1.0, f"hh-{i}"
    trainer = SoftDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=args,
        train_dataset=dpo_dataset(rows),
        processing_class=tok,
    )
    trainer.train()
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    return out


def charter_eval(spec: dict, tmp_path: Path, *, name: str = "eval.yaml") -> subprocess.CompletedProcess[str]:
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({
        "inference": {"engine": "transformers", "dtype": "float32", "threads": 1, "max_model_len": 1024},
        "trainer": {"database_url": f"sqlite:///{tmp_path / 'trainer.db'}", "runs_dir": str(tmp_path / "runs")},
    }))  # fmt: skip
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return subprocess.run(
        [tool("charter"), "eval", "policy", str(path), "--config", str(settings)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


@pytest.mark.timeout(1200)
def test_eval_policy_base_vs_dpo_end_to_end_and_resumes(tmp_path, embedded_model):
    torch.set_num_threads(1)
    base = tiny.save_tiny_lm(tmp_path / "base", embedded_model, seed=0)
    training = hh_pairs(8)
    dpo = short_dpo(base, [dict(r) for r in training], tmp_path / "dpo")
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in training))
    rms = [str(tiny.save_tiny_reward_model(tmp_path / f"rm{s}", embedded_model, seed=s)) for s in (0, 1)]
    out = tmp_path / "out"
    spec = {
        "kind": "eval-policy", "name": "base-vs-dpo",
        "models": [{"name": "base", "model": str(base)}, {"name": "dpo", "model": str(dpo)}],
        "red_team": {"path": str(HH_DEV), "limit": 3},
        "benign": {"limit": 3},
        "generation": {"max_tokens": 12, "temperature": 0.7},
        "judge": {"principles_per_label": 1},
        "reward_models": rms,
        "gold": {"path": str(HH_DEV), "limit": 14, "exclude": [str(train_file)]},
        "review": {"sample": 3, "database": f"sqlite:///{tmp_path / 'review.db'}"},
        "bootstrap_resamples": 100, "batch_size": 4, "output": str(out),
    }  # fmt: skip
    result = charter_eval(spec, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "eval.json").read_text())
    figures = report["figures"]
    assert report["config"]["prompts"] == {"red_team": 3, "benign": 3}
    for name in ("base", "dpo"):
        records = [
            json.loads(x) for x in (out / "generations" / name / "records.jsonl").read_text().splitlines()
        ]
        assert len(records) == 6 and all(r["completion_tokens"] <= 12 for r in records)
        assert {r["finish_reason"] for r in records} <= {"stop", "length"}
        cut = [r["completion_tokens"] == 12 for r in records if r["finish_reason"] == "length"]
        assert all(cut) and figures["length"][name]["cut_at_max_tokens"]["hits"] == len(cut)
    judgments = [json.loads(x) for x in (out / "judgments" / "records.jsonl").read_text().splitlines()]
    assert len(judgments) == 6 and {(j["a"], j["b"]) for j in judgments} == {("base", "dpo")}
    win = figures["win_rate"]["dpo"]
    assert win["comparisons"] == 6 and win["overall"]["n"] == 6 - win["unscored"]
    assert win["overall"]["n"] == win["red_team"]["n"] + win["benign"]["n"]
    # the headline recomputed from the records: ties half, unscored left out
    credit = [0.5 if j["status"] == "tie" else float(j["p_a_wins"] < 0.5) for j in judgments
              if j["status"] in ("ok", "tie")]  # fmt: skip
    if credit:
        assert win["overall"]["rate"] == pytest.approx(sum(credit) / len(credit))
    elo = figures["ranking"]["all"]["models"]
    assert elo["base"]["elo"] == pytest.approx(1000.0) and set(elo) == {"base", "dpo"}
    assert set(figures["evasiveness"]) == {"base", "dpo"}
    assert figures["evasiveness"]["dpo"]["benign_refusal"]["n"] == 3
    assert set(figures["reward"]["by_reward_model"]) == set(rms) and set(figures["reward"]["ensemble"]) == {
        "base",
        "dpo",
    }
    gold = figures["gold"]
    assert gold["dropped"]["in_training_data"] == 8  # the DPO run's pairs are never the gold signal
    assert gold["pairs"] == 14 - 8 - gold["dropped"]["bad_rows"] - gold["dropped"]["no_human_label"]
    assert gold["models"]["dpo"]["n"] == gold["pairs"] and 0 <= gold["models"]["dpo"]["accuracy"] <= 1
    assert "skipped" in gold["models"]["base"]  # the reference itself
    for chart in ("winrate.png", "elo.png", "rewards.png"):
        assert (out / chart).stat().st_size > 1000
    assert "| dpo |" in (out / "report.md").read_text()
    # people beside the judge: the sample waits in the queue (asked for, whatever the confidence)
    assert figures["human"]["sampled"] == 3 and figures["human"]["decided"] == 0
    decided = decide_everything(tmp_path / "review.db")
    assert len(decided) == 3
    # a second run resumes: nothing generated or judged again, the same figures, the human decisions read
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/records.jsonl")}
    again = charter_eval(spec, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/records.jsonl")} == before
    second = json.loads((out / "eval.json").read_text())["figures"]
    assert second["win_rate"] == figures["win_rate"]
    human = second["human"]["models"]["dpo"]["human"]
    by_id = {j["label"]["id"]: j for j in judgments if j.get("label")}
    # every reviewer chose the response shown as A: a win for dpo where dpo was shown first
    wins = [float(by_id[i]["a_shown_first"] == (by_id[i]["a"] == "dpo")) for i in decided]
    assert human["n"] == 3 and human["rate"] == pytest.approx(sum(wins) / 3)
    assert "People beside the AI judge" in (out / "report.md").read_text()


def decide_everything(database: Path) -> list[str]:
    """A reviewer decides every queued item 'A'; returns the label ids, checking each was queued
    because the evaluation asked for it."""
    from charter.core.settings import RoutingSettings
    from charter.review.store import Ledger
    from charter.review.types import HumanChoice, RouteReason

    ledger = Ledger(f"sqlite:///{database}", RoutingSettings())
    ids = []
    try:
        while (item := ledger.claim("reviewer-1").item) is not None:
            assert item.reason == RouteReason.REQUESTED
            ledger.decide("reviewer-1", item.item_id, item.lease_id, HumanChoice.A)
            ids.append(item.item_id)
    finally:
        ledger.close()
    return ids


@pytest.mark.parametrize("case", ["unknown model", "unknown run", "mismatched reward model", "no prompts"])
def test_bad_input_is_one_clear_line_and_nothing_written(tmp_path, embedded_model, case):
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    models = [{"name": "base", "model": "embedded"}, {"name": "other", "model": str(tmp_path / "nope")}]
    spec = {"kind": "eval-policy", "name": "bad", "models": models, "red_team": {"path": str(HH_DEV), "limit": 2},
            "output": str(out)}  # fmt: skip
    expected = "nope is not a model"
    if case == "unknown run":
        models[1] = {"name": "other", "run": "run_doesnotexist"}
        expected = "run_doesnotexist"
    elif case == "mismatched reward model":
        from transformers import LlamaForSequenceClassification

        tok = tiny.tokenizer(embedded_model)
        rm = tmp_path / "rm"
        LlamaForSequenceClassification(tiny.llama_config(tok, num_labels=1, vocab_size=1000)).save_pretrained(
            rm
        )
        tok.save_pretrained(rm)
        models[1] = {"name": "other", "model": "embedded"}
        spec["reward_models"] = [str(rm)]
        expected = "tokenizer does not match"
    elif case == "no prompts":
        models[1] = {"name": "other", "model": "embedded"}
        spec["red_team"] = {"path": str(empty)}
        expected = "no usable prompts"
    result = charter_eval(spec, tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert not out.exists()


@pytest.mark.timeout(900)
def test_a_model_behind_an_openai_compatible_endpoint(tmp_path, embedded_model, vllm_server):
    """One model served by a real `vllm serve`, the other a local folder: both generate through the
    generator service (the openai engine for the endpoint), and the endpoint's model has no weights
    here, so the gold signal skips it and says why."""
    from charter.inference.models import EMBEDDED_NAME

    tiny_lm = tiny.save_tiny_lm(tmp_path / "tiny", embedded_model, seed=0)
    out = tmp_path / "out"
    spec = {
        "kind": "eval-policy", "name": "endpoint",
        "models": [
            {"name": "served", "openai_url": vllm_server, "served_model_name": EMBEDDED_NAME, "tokenizer": "embedded"},
            {"name": "tiny", "model": str(tiny_lm)},
        ],
        "red_team": {"path": str(HH_DEV), "limit": 2}, "benign": {"limit": 2},
        "generation": {"max_tokens": 8, "temperature": 0.0}, "judge": {"principles_per_label": 1},
        "gold": {"path": str(HH_DEV), "limit": 3},
        "bootstrap_resamples": 50, "output": str(out),
    }  # fmt: skip
    result = charter_eval(spec, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    served = [
        json.loads(x) for x in (out / "generations" / "served" / "records.jsonl").read_text().splitlines()
    ]
    assert len(served) == 4 and {r["model"]["engine"] for r in served} == {"openai"}
    assert {r["model"]["name"] for r in served} == {EMBEDDED_NAME}
    figures = json.loads((out / "eval.json").read_text())["figures"]
    assert figures["win_rate"]["tiny"]["comparisons"] == 4
    assert "no local model folder" in figures["gold"]["models"]["tiny"]["skipped"]  # π_ref is the endpoint

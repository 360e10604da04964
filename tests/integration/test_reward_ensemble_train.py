"""Reward-model ensembles for real, with tiny models built from a config and the embedded tokenizer: a
short ensemble run through the worker (members differ; ensemble.json and spread.jsonl agree with the
members' scores recomputed by `RewardScorer`; the steps run on across members and the curves draw them),
a resume that keeps the finished member and continues the interrupted one from its checkpoint, and the
online trainers rewarded by an ensemble folder with the members' mean (PPO's scorer, GRPO through TRL,
and a service run that names the ensemble run by its id)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from charter.api.trainer import spec_from_proto
from charter.app.trainer_worker import Runner
from charter.core.errors import InvalidArgument
from charter.trainer import events
from charter.trainer.curves import plot_curves, series
from charter.trainer.data import from_files
from charter.trainer.online import online_trainer, prompts_from_rows
from charter.trainer.ppo import RewardModelScorer
from charter.trainer.scoring import (
    ENSEMBLE_FILE,
    RewardEnsemble,
    RewardScorer,
    disagreement,
    ensemble_members,
)
from charter.trainer.spec import check, trl_config
from charter_proto.trainer.v1 import trainer_pb2 as tp
from safetensors.torch import load_file

from tests.support import tiny
from tests.support.hh import HH_DEV
from tests.support.trainer import run_spec, trainer_service, trainer_settings, watch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RM = {
    "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 96, "learning_rate": 1e-3,
    "logging_steps": 1, "save_steps": 1,
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory, embedded_model) -> Path:
    return tiny.save_tiny_lm(tmp_path_factory.mktemp("base") / "lm", embedded_model)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """40 hh-rlhf pairs: with eval_fraction 0.25, 30 to train on and 10 held out."""
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in from_files([HH_DEV]).rows[:40]))
    return path


def ensemble_spec(base: Path, pairs: Path, **ensemble) -> tp.RunSpec:
    spec = run_spec(tp.ALGORITHM_REWARD_MODEL, base, files=[str(pairs)], eval_fraction=0.25, name="rms", **RM)
    spec.ensemble.CopyFrom(tp.RewardModelEnsemble(**ensemble))
    return spec


def work(spec: tp.RunSpec, run_dir: Path, *, resume: bool = False) -> list[dict]:
    """The worker's run of `spec` in this process; the events it reported."""
    out = io.StringIO()
    Runner(spec, check(spec_from_proto(spec)), run_dir, resume, events.Emitter(out)).run()
    return [e for e in map(events.parse, out.getvalue().splitlines()) if e is not None]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def held_out(run_dir: Path) -> list[dict]:
    """The run's eval split, as the worker cut it from its cached rows."""
    from charter.app.trainer_data import split

    rows = [json.loads(line) for line in (run_dir / "data" / "rows.jsonl").read_text().splitlines()]
    return split(rows, 0.25, 0)[1]


def test_an_ensemble_run_trains_distinct_members_and_writes_their_spread(tmp_path, base, pairs):
    run_dir = tmp_path / "run"
    reported = work(ensemble_spec(base, pairs, size=3, vary=tp.ENSEMBLE_VARY_SEED), run_dir)
    model = run_dir / "model"

    # one run, three members one after another: the steps run on, each member's metrics name it
    assert {e["total_steps"] for e in reported if e["type"] == "progress"} == {6}
    losses = [
        (e["step"], e["values"]["member"])
        for e in reported
        if e["type"] == "metrics" and "loss" in e["values"]
    ]
    assert losses == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]
    checkpoints = [(e["step"], Path(e["path"])) for e in reported if e["type"] == "checkpoint"]
    assert checkpoints == [
        (s, run_dir / "checkpoints" / f"member-{(s - 1) // 2}" / f"checkpoint-{(s - 1) % 2 + 1}")
        for s in range(1, 7)
    ]
    assert reported[-1] == {"type": "finished", "output_dir": str(model)}

    members = ensemble_members(model)
    assert members == [str(model / f"member-{i}") for i in range(3)]
    infos = [json.loads((Path(m) / "member.json").read_text()) for m in members]
    assert [(i["seed"], i["train_rows"], i["steps"]) for i in infos] == [(0, 30, 2), (1, 30, 2), (2, 30, 2)]
    heads = [weights(Path(m))["score.weight"] for m in members]
    assert not any(torch.equal(heads[a], heads[b]) for a, b in ((0, 1), (0, 2), (1, 2)))  # members differ
    for m in members:  # and they trained away from the base model
        assert not torch.equal(weights(Path(m))["model.norm.weight"], weights(base)["model.norm.weight"])

    # spread.jsonl: every member's scores of every held-out pair, as RewardScorer makes them again
    lines = [json.loads(line) for line in (model / "spread.jsonl").read_text().splitlines()]
    rows = held_out(run_dir)
    assert len(lines) == len(rows) == 10
    prompts = [r["prompt"] for r in rows]
    for i, member in enumerate(members):
        with RewardScorer(member) as scorer:
            chosen = scorer.score(prompts, [r["chosen"][0]["content"] for r in rows])
            rejected = scorer.score(prompts, [r["rejected"][0]["content"] for r in rows])
        assert [line["chosen_scores"][i] for line in lines] == pytest.approx(chosen, abs=1e-4)
        assert [line["rejected_scores"][i] for line in lines] == pytest.approx(rejected, abs=1e-4)
    for line in lines:
        margins = [c - r for c, r in zip(line["chosen_scores"], line["rejected_scores"], strict=True)]
        assert line["margins"] == pytest.approx(margins)
        assert line["disagreement"] == disagreement(line["margins"])
    by_member = RewardEnsemble(model).score(prompts, [r["chosen"][0]["content"] for r in rows])
    for i, scores in enumerate(by_member):  # what eval policy and RL-CAI's `ensemble:` read
        assert scores == pytest.approx([line["chosen_scores"][i] for line in lines], abs=1e-4)

    # ensemble.json summarises the same numbers, and the last metrics event carries them
    manifest = json.loads((model / ENSEMBLE_FILE).read_text())
    assert manifest["kind"] == "reward-model-ensemble" and manifest["vary"] == "seed"
    accuracy = [sum(line["margins"][i] > 0 for line in lines) / 10 for i in range(3)]
    assert [m["eval_pairwise_accuracy"] for m in manifest["per_member"]] == accuracy
    spread = manifest["spread"]
    assert spread["mean_disagreement"] == pytest.approx(sum(line["disagreement"] for line in lines) / 10)
    assert spread["split_pairs"] == sum(line["disagreement"] > 0 for line in lines)
    assert manifest["eval_pairs"] == 10 and manifest["spread_file"] == "spread.jsonl"
    final = [e for e in reported if e["type"] == "metrics" and "ensemble/mean_accuracy" in e["values"]]
    assert len(final) == 1 and final[0]["step"] == 6
    assert final[0]["values"]["ensemble/mean_accuracy"] == pytest.approx(sum(accuracy) / 3)
    assert final[0]["values"]["ensemble/vote_accuracy"] == pytest.approx(spread["vote_accuracy"])
    assert final[0]["values"]["ensemble/score_std"] == pytest.approx(spread["score_std"])
    assert spread["score_std"] > 0
    assert final[0]["values"]["member1/eval_pairwise_accuracy"] == accuracy[1]

    # the curves: one loss line over the run's steps
    metrics = [(e["step"], e["values"]) for e in reported if e["type"] == "metrics"]
    assert series(metrics)["loss"][0] == [1, 2, 3, 4, 5, 6]
    png = plot_curves(metrics, "rms", tmp_path / "curves.png")
    assert png is not None and png.stat().st_size > 0


def test_a_resumed_ensemble_keeps_finished_members_and_resumes_the_interrupted_one(tmp_path, base, pairs):
    spec = ensemble_spec(base, pairs, size=2, vary=tp.ENSEMBLE_VARY_SUBSET, subset_fraction=0.5)
    run_dir = tmp_path / "run"
    model = run_dir / "model"
    work(spec, run_dir)
    samples = [
        json.loads((model / f"member-{i}" / "member.json").read_text())["train_rows"] for i in range(2)
    ]
    assert samples == [15, 15]
    finished = (model / "member-0" / "model.safetensors").stat().st_mtime_ns
    first = weights(model / "member-1")
    # as if the worker had been killed in member 1's second step, after its first checkpoint
    for path in (model / "member-1", run_dir / "checkpoints" / "member-1" / "checkpoint-2"):
        for file in sorted(path.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        path.rmdir()
    (model / ENSEMBLE_FILE).unlink()
    (model / "spread.jsonl").unlink()

    reported = work(spec, run_dir, resume=True)

    logs = [e["message"] for e in reported if e["type"] == "log"]
    assert logs[0] == "member 0 was trained by an earlier attempt: kept"
    assert logs[1] == f"member 1: resuming from {run_dir / 'checkpoints' / 'member-1' / 'checkpoint-1'}"
    losses = [
        (e["step"], e["values"]["member"])
        for e in reported
        if e["type"] == "metrics" and "loss" in e["values"]
    ]
    assert losses == [(4, 1)]  # member 0 is not trained again; member 1 goes on at its step 2 (run step 4)
    assert (model / "member-0" / "model.safetensors").stat().st_mtime_ns == finished
    again = weights(model / "member-1")
    assert all(torch.allclose(again[k], first[k], atol=1e-6) for k in first)  # the same member as before
    manifest = json.loads((model / ENSEMBLE_FILE).read_text())
    assert manifest["members"] == ["member-0", "member-1"] and manifest["subset_fraction"] == 0.5
    assert len((model / "spread.jsonl").read_text().splitlines()) == 10


def test_without_held_out_pairs_the_spread_is_not_measured(tmp_path, base, pairs):
    spec = ensemble_spec(base, pairs, size=2)
    spec.data.eval_fraction = 0.0
    spec.hyperparameters.update({"max_steps": 1, "save_steps": 1000})
    reported = work(spec, tmp_path / "run")
    warnings = [e["message"] for e in reported if e["type"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 1 and "eval_fraction is 0" in warnings[0]
    manifest = json.loads((tmp_path / "run" / "model" / ENSEMBLE_FILE).read_text())
    assert manifest["spread"] is None and manifest["eval_pairs"] == 0
    assert [m["eval_pairwise_accuracy"] for m in manifest["per_member"]] == [None, None]
    assert not (tmp_path / "run" / "model" / "spread.jsonl").exists()
    assert not [e for e in reported if e["type"] == "metrics" and "ensemble/mean_accuracy" in e["values"]]


# -- the online trainers on an ensemble folder -----------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, embedded_model) -> Path:
    """An ensemble folder of two random reward models, as an ensemble run leaves one."""
    folder = tmp_path_factory.mktemp("ensemble")
    for i in range(2):
        tiny.save_tiny_reward_model(folder / f"member-{i}", embedded_model, seed=10 + i)
    (folder / ENSEMBLE_FILE).write_text(
        json.dumps({"kind": "reward-model-ensemble", "members": ["member-0", "member-1"]})
    )
    return folder


def test_ppos_scorer_rewards_with_the_members_mean(ensemble):
    prompts, completions = ["<|im_start|>user\nhi<|im_end|>\n", "a b c"], [" hello there", " dog"]
    one = [RewardModelScorer(ensemble / f"member-{i}")(prompts, completions) for i in range(2)]
    assert not torch.allclose(one[0], one[1])
    scorer = RewardModelScorer(ensemble)
    assert len(scorer.members) == 2
    assert torch.allclose(scorer(prompts, completions), (one[0] + one[1]) / 2, atol=1e-6)


def test_grpo_rewards_with_the_members_mean(tmp_path, ensemble, embedded_model):
    import pyarrow.parquet as pq
    from transformers import LlamaForCausalLM

    tokenizer = tiny.tokenizer(embedded_model)
    LlamaForCausalLM(tiny.llama_config(tokenizer)).save_pretrained(tmp_path / "policy")
    policy = LlamaForCausalLM.from_pretrained(tmp_path / "policy")
    prompts = prompts_from_rows(from_files([HH_DEV]).rows[:4])
    hyperparameters = {
        "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 6, "max_steps": 1,
        "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "gradient_checkpointing": False,
        "log_completions": True,
    }  # fmt: skip
    config = trl_config("grpo", hyperparameters, output_dir=str(tmp_path / "grpo"), seed=0, use_cpu=True)
    trainer = online_trainer("grpo", policy, tokenizer, ensemble, prompts, config)
    assert config.reward_weights is None  # the caller's config is left as it was
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "reward" in e)
    table = pq.read_table(tmp_path / "grpo" / "completions" / "completions_00001.parquet").to_pylist()
    scores = [RewardScorer(ensemble / f"member-{i}") for i in range(2)]
    for row in table:  # each member's column is its own score; the reward is their mean
        for i, scorer in enumerate(scores):
            assert row[f"member-{i}"] == pytest.approx(
                scorer.score([row["prompt"]], [row["completion"][0]["content"]])[0], abs=1e-4
            )
    assert logged["reward"] == pytest.approx(
        sum((r["member-0"] + r["member-1"]) / 2 for r in table) / len(table), abs=1e-5
    )
    assert math.isfinite(logged["rewards/member-1/mean"])
    weighted = trl_config(
        "grpo",
        {**hyperparameters, "reward_weights": [1.0]},
        output_dir=str(tmp_path / "g2"),
        seed=0,
        use_cpu=True,
    )
    with pytest.raises(InvalidArgument) as err:
        online_trainer("grpo", policy, tokenizer, ensemble, prompts, weighted)
    assert err.value.field == "spec.hyperparameters.reward_weights"


async def test_a_service_run_trains_an_ensemble_and_grpo_names_it_by_run_id(tmp_path, base, pairs):
    async with trainer_service(trainer_settings(tmp_path)) as stub:

        async def run(spec: tp.RunSpec) -> tuple[tp.Run, list[tp.RunEvent]]:
            started = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
            events_ = await watch(stub, started.id, timeout=500)
            done = (await stub.GetRun(tp.GetRunRequest(run_id=started.id))).run
            assert done.state == tp.RUN_STATE_SUCCEEDED, (done.spec.name, done.reason)
            return done, events_

        spec = ensemble_spec(base, pairs, size=2)
        spec.hyperparameters.update({"max_steps": 1, "save_steps": 1000})
        rms, _ = await run(spec)
        assert rms.spec.ensemble.size == 2 and (rms.step, rms.total_steps) == (2, 2)
        assert {"ensemble/mean_accuracy", "ensemble/mean_disagreement", "ensemble/score_std"} <= set(
            rms.last_metrics
        )
        assert len(ensemble_members(rms.output_dir)) == 2
        grpo = run_spec(
            tp.ALGORITHM_GRPO, base, files=[str(pairs)], reward_model=rms.id, name="grpo", max_steps=1,
            per_device_train_batch_size=2, num_generations=2, max_completion_length=4, logging_steps=1,
            save_steps=1000, gradient_checkpointing=False, learning_rate=1e-3,
        )  # fmt: skip
        done, _ = await run(grpo)
    assert done.spec.reward_model == rms.output_dir  # the ensemble run's folder
    assert {"rewards/member-0/mean", "rewards/member-1/mean", "reward"} <= set(done.last_metrics)
    members = [done.last_metrics[f"rewards/member-{i}/mean"] for i in range(2)]
    assert done.last_metrics["reward"] == pytest.approx(sum(members) / 2, abs=1e-5)

"""The reward-hacking watch in real PPO and GRPO runs of the worker, with tiny models built from a
config: both curves are emitted and drawn; a gold reward model that is the proxy negated (gold falls
exactly when the proxy rises: reward hacking by construction) trips the watch, stops the run and leaves
the best-gold weights as the model; a resume redoes the checks after its checkpoint; the AI judge as
gold goes through a real judge service and the judge token from the environment."""

from __future__ import annotations

import asyncio
import io
import json
import math
from pathlib import Path

import pytest
import torch
from charter.api.trainer import spec_from_proto
from charter.app.trainer_worker import Runner
from charter.core.errors import CharterError
from charter.trainer import events
from charter.trainer.curves import plot_curves, watch_series
from charter.trainer.scoring import RewardScorer
from charter.trainer.spec import check
from charter_proto.trainer.v1 import trainer_pb2 as tp
from safetensors.torch import load_file

from tests.support import CONSTITUTIONS, tiny
from tests.support.hh import HH_DEV
from tests.support.trainer import run_spec

pytestmark = pytest.mark.integration

PROBES = ["What is the capital of France?", "Name a colour.", "How are you today?", "Tell me a joke."]
PPO = {
    "total_steps": 4, "save_steps": 2, "rollout_batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1,
    "max_new_tokens": 6, "max_prompt_length": 64, "learning_rate": 1e-3,
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory, embedded_model) -> dict[str, Path]:
    """A tiny policy (untied embeddings: its greedy answers are words, not blank lines), a tiny proxy
    reward model, an unrelated gold one, and the proxy negated."""
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    tokenizer = tiny.tokenizer(embedded_model)
    torch.manual_seed(1)
    LlamaForCausalLM(tiny.llama_config(tokenizer)).save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    proxy = tiny.save_tiny_reward_model(root / "proxy", embedded_model, seed=1)
    negated = AutoModelForSequenceClassification.from_pretrained(proxy)
    with torch.no_grad():
        negated.score.weight.neg_()
    negated.save_pretrained(root / "negated")
    tokenizer.save_pretrained(root / "negated")
    return {
        "policy": root / "policy",
        "proxy": proxy,
        "gold": tiny.save_tiny_reward_model(root / "gold", embedded_model, seed=2),
        "negated": root / "negated",
    }


@pytest.fixture
def probe_file(tmp_path) -> Path:
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROBES))
    return path


def watched_spec(
    algorithm: int, models: dict[str, Path], watch: tp.RewardWatch, **hyperparameters
) -> tp.RunSpec:
    spec = run_spec(
        algorithm, models["policy"], files=[str(HH_DEV)], reward_model=str(models["proxy"]), **hyperparameters
    )
    spec.watch.CopyFrom(watch)
    return spec


def work(spec: tp.RunSpec, run_dir: Path, *, resume: bool = False) -> list[dict]:
    """The worker's run of `spec` in this process; the events it reported."""
    out = io.StringIO()
    Runner(spec, check(spec_from_proto(spec)), run_dir, resume, events.Emitter(out)).run()
    return [e for e in map(events.parse, out.getvalue().splitlines()) if e is not None]


def watch_checks(reported: list[dict]) -> list[tuple[int, float, float]]:
    return [
        (e["step"], e["values"]["watch/proxy"], e["values"]["watch/gold"])
        for e in reported
        if e["type"] == "metrics" and "watch/proxy" in e["values"]
    ]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_ppo_run_with_the_watch_emits_both_curves(tmp_path, models, probe_file):
    watch = tp.RewardWatch(
        every_steps=2, probe=tp.FileSource(paths=[str(probe_file)]), gold_reward_model=str(models["gold"])
    )
    reported = work(watched_spec(tp.ALGORITHM_PPO, models, watch, **PPO), tmp_path / "run")

    checks = watch_checks(reported)
    assert [step for step, _, _ in checks] == [0, 2, 4]
    assert all(math.isfinite(p) and math.isfinite(g) for _, p, g in checks)
    # the step-0 check is the reference policy's greedy answers, scored by each reward model itself
    cached = [
        json.loads(line) for line in (tmp_path / "run" / "watch" / "probe.jsonl").read_text().splitlines()
    ]
    assert [row["prompt"] for row in cached] == [[{"role": "user", "content": p}] for p in PROBES]
    prompts, replies = [row["prompt"] for row in cached], [row["reference"] for row in cached]
    for folder, expected in ((models["proxy"], checks[0][1]), (models["gold"], checks[0][2])):
        scores = RewardScorer(folder).score(prompts, replies)
        assert sum(scores) / len(scores) == pytest.approx(expected, abs=1e-5)
    assert checks[0][1] != pytest.approx(checks[0][2])  # two different scorers
    assert not [e for e in reported if e["type"] == "log" and e["level"] == "warning"]
    assert (tmp_path / "run" / "model" / "value_head.safetensors").exists()  # the run's own last weights

    metrics = [(e["step"], e["values"]) for e in reported if e["type"] == "metrics"]
    assert watch_series(metrics) == {
        "proxy": ([0, 2, 4], [p for _, p, _ in checks]),
        "gold": ([0, 2, 4], [g for _, _, g in checks]),
    }
    png = plot_curves(metrics, "ppo", tmp_path / "curves.png")
    assert png is not None and png.stat().st_size > 0


def test_a_diverging_gold_stops_the_run_and_keeps_the_best_gold_weights(tmp_path, models, probe_file):
    watch = tp.RewardWatch(
        every_steps=1, probe=tp.FileSource(paths=[str(probe_file)]), gold_reward_model=str(models["negated"]),
        patience=1, stop_on_divergence=True,
    )  # fmt: skip
    total = 8
    run_dir = tmp_path / "run"
    reported = work(
        watched_spec(tp.ALGORITHM_PPO, models, watch, **{**PPO, "total_steps": total, "save_steps": 1}),
        run_dir,
    )

    checks = watch_checks(reported)
    assert all(g == pytest.approx(-p, abs=1e-5) for _, p, g in checks)  # gold is the proxy negated
    # the rule by hand: the first check whose proxy is above the proxy at the best-gold check so far
    best, fired = checks[0], None
    for check_ in checks[1:]:
        if check_[2] > best[2]:
            best = check_
        elif check_[1] > best[1]:
            fired = check_
            break
    assert fired is not None, f"the proxy never rose in this run: {checks}"
    assert checks[-1] == fired and fired[0] < total  # stopped at the divergence
    warnings = [e["message"] for e in reported if e["type"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 2 and f"best gold at step {best[0]}" in warnings[0]
    assert f"step {fired[0]}" in warnings[1] and f"checkpoint, step {best[0]}" in warnings[1]
    # the model is the best-gold check's weights: the base model, or the checkpoint saved at that step
    source = (
        models["policy"] if best[0] == 0 else run_dir / "checkpoints" / f"checkpoint-{best[0]}" / "policy"
    )
    model, expected = weights(run_dir / "model"), weights(source)
    assert model.keys() == expected.keys()
    assert all(torch.equal(model[k], expected[k]) for k in model)
    assert (run_dir / "model" / "tokenizer_config.json").exists()
    assert [p.name for p in (run_dir / "watch").glob("best-*")] == [f"best-{best[0]}"]


def test_a_resumed_run_redoes_the_checks_after_its_checkpoint(tmp_path, models, probe_file):
    watch = tp.RewardWatch(
        every_steps=1, probe=tp.FileSource(paths=[str(probe_file)]), gold_reward_model=str(models["gold"]),
        stop_on_divergence=True, patience=5,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    first = work(watched_spec(tp.ALGORITHM_PPO, models, watch, **{**PPO, "total_steps": 2}), run_dir)
    assert [c[0] for c in watch_checks(first)] == [0, 1, 2]
    reference = (run_dir / "watch" / "probe.jsonl").read_text()
    # as if the worker had died after a check at step 3 and before its checkpoint
    with open(run_dir / "watch" / "checks.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "proxy": -100.0, "gold": 100.0}) + "\n" + '{"step": 4, "pro')
    (run_dir / "watch" / "best-3").mkdir()

    second = work(
        watched_spec(tp.ALGORITHM_PPO, models, watch, **{**PPO, "total_steps": 4}), run_dir, resume=True
    )

    assert [c[0] for c in watch_checks(second)] == [3, 4]  # 0-2 are kept, the lost step 3 is redone
    lines = [json.loads(line) for line in (run_dir / "watch" / "checks.jsonl").read_text().splitlines()]
    assert [c["step"] for c in lines] == [0, 1, 2, 3, 4] and lines[3]["gold"] != 100.0
    assert (run_dir / "watch" / "probe.jsonl").read_text() == reference  # the reference answers are reused


def test_a_grpo_run_stops_at_the_divergence_on_a_held_out_probe(tmp_path, models):
    watch = tp.RewardWatch(
        every_steps=1, probe_size=2, gold_reward_model=str(models["negated"]), max_new_tokens=4, patience=1,
        stop_on_divergence=True,
    )  # fmt: skip
    total = 6
    spec = watched_spec(
        tp.ALGORITHM_GRPO, models, watch, max_steps=total, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=6, gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1,
        save_steps=1,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    reported = work(spec, run_dir)

    checks = watch_checks(reported)
    assert [c[0] for c in checks] == list(range(len(checks)))  # every step, from step 0
    assert all(g == pytest.approx(-p, abs=1e-5) for _, p, g in checks)
    best = max(checks[:-1], key=lambda c: (c[2], -c[0]))
    fired = checks[-1]
    assert fired[0] < total and fired[1] > best[1], f"no divergence in this run: {checks}"
    rewards = [e for e in reported if e["type"] == "metrics" and "reward" in e["values"]]
    assert len(rewards) == fired[0]  # TRL stopped right after the check that fired
    warnings = [e["message"] for e in reported if e["type"] == "log" and e["level"] == "warning"]
    assert f"checkpoint, step {best[0]}" in warnings[-1]
    # the model is the best-gold check's weights: the base model, or TRL's checkpoint at that step
    source = models["policy"] if best[0] == 0 else run_dir / "checkpoints" / f"checkpoint-{best[0]}"
    model, expected = weights(run_dir / "model"), weights(source)
    assert model.keys() == expected.keys() and all(torch.equal(model[k], expected[k]) for k in model)
    assert [p.name for p in (run_dir / "watch").glob("best-*")] == [f"best-{best[0]}"]
    probe = [
        json.loads(line)["prompt"] for line in (run_dir / "watch" / "probe.jsonl").read_text().splitlines()
    ]
    assert len(probe) == 2 and all(p[-1]["role"] == "user" for p in probe)


async def test_the_judge_as_gold_through_a_real_judge_service(tmp_path, models, probe_file, monkeypatch):
    from charter.app.local import local_services
    from charter.core.settings import load_settings

    from tests.support.fake_engine import FakeEngine

    settings = load_settings(
        constitutions={"directory": CONSTITUTIONS},
        judge={"tokens": [{"name": "trainer", "role": "service", "token": "s3cret"}]},
    )
    engine = FakeEngine()
    async with local_services(settings, ["judge"], engine=engine, drain_seconds=0) as address:
        judge = tp.JudgeGold(address=address, constitution_id="harmless", principles_per_label=1)
        watch = tp.RewardWatch(every_steps=2, probe=tp.FileSource(paths=[str(probe_file)]), gold_judge=judge)
        spec = watched_spec(tp.ALGORITHM_PPO, models, watch, **{**PPO, "total_steps": 2})

        monkeypatch.delenv("CHARTER_JUDGE_TOKEN", raising=False)
        with pytest.raises(CharterError, match="UNAUTHENTICATED") as refused:  # fails at step 0, not hours in
            await asyncio.to_thread(work, spec, tmp_path / "no-token")
        assert refused.value.field == "spec.watch.gold_judge"

        token_file = tmp_path / "judge-token"
        token_file.write_text("s3cret\n")
        monkeypatch.setenv("CHARTER_JUDGE_TOKEN_FILE", str(token_file))
        calls = len(engine.calls)
        reported = await asyncio.to_thread(work, spec, tmp_path / "run")

    checks = watch_checks(reported)
    assert [c[0] for c in checks] == [0, 2]
    # the fake engine prefers whichever answer comes first, so the judge's two orders give exactly 0.5
    assert all(g == pytest.approx(0.5) for _, _, g in checks)
    assert len(engine.calls) > calls  # the judge scored them


@pytest.mark.timeout(300)
async def test_the_curves_reach_watch_run_through_the_trainer_service(
    tmp_path, models, probe_file, monkeypatch
):
    import grpc

    from tests.support.trainer import trainer_service, trainer_settings, watch

    monkeypatch.chdir(probe_file.parent)  # a relative probe path, as a user types it
    spec = watched_spec(
        tp.ALGORITHM_PPO, models,
        tp.RewardWatch(every_steps=1, probe=tp.FileSource(paths=[probe_file.name]), gold_reward_model=str(models["gold"])),
        **{**PPO, "total_steps": 2},
    )  # fmt: skip
    async with trainer_service(trainer_settings(tmp_path)) as stub:
        bad = tp.RunSpec()
        bad.CopyFrom(spec)
        bad.watch.gold_reward_model = "r-0000000000000000"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartRun(tp.StartRunRequest(spec=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.watch.gold_reward_model: no run r-0000000000000000" in err.value.details()

        run = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
        assert run.spec.watch.probe.paths == [str(probe_file)]  # the worker runs elsewhere: made absolute
        recorded = await watch(stub, run.id, timeout=280)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
    assert done.state == tp.RUN_STATE_SUCCEEDED, done.reason
    checks = [
        e.metrics for e in recorded if e.WhichOneof("kind") == "metrics" and "watch/gold" in e.metrics.values
    ]
    assert [m.step for m in checks] == [0, 1, 2]
    assert all({"watch/proxy", "watch/gold"} == set(m.values) for m in checks)
    assert {"watch/proxy", "watch/gold", "reward_mean"} <= set(done.last_metrics)

"""The reward-hacking watch inside a training worker (PPO, GRPO, RLOO; docs/trainer.md).

At step 0, every `every_steps` steps and at the last step, the policy answers a fixed probe set
(greedy, batched, no gradients); the proxy (the run's reward model) and the gold scorer (a held-out
reward model, or the AI judge comparing each answer with the reference policy's) score the answers;
their means go out as a `metrics` event (`watch/proxy`, `watch/gold`) and feed
`charter.trainer.watch.DivergenceDetector`. When it fires, the worker emits a `log` event at level
`warning` and a structlog warning; with `stop_on_divergence` it stops, and its model is the weights of
the best-gold check.

What survives a restart lives in DIR/watch: `probe.jsonl` (the probe prompts and the reference
policy's answers, made once from the initial weights), `checks.jsonl` (one line per check), and with
`stop_on_divergence` the best-gold weights as `best-<step>/`. A resume from the checkpoint at step S
keeps the checks up to S (later ones are redone) and the best-gold weights among them: older `best-*`
folders are only removed once a checkpoint at or after the newer best has been saved.

The judge's token comes from `CHARTER_JUDGE_TOKEN` or the file named by `CHARTER_JUDGE_TOKEN_FILE`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from transformers import TrainerCallback

from charter.core.auth import environment_token
from charter.core.errors import CharterError, FailedPrecondition, InvalidArgument, NotFound
from charter.core.files import write_atomic
from charter.trainer import events
from charter.trainer.probe import Prompt, greedy_replies, hold_out, read_probe_files
from charter.trainer.runs import JudgeGold, RewardWatch
from charter.trainer.watch import DivergenceDetector

log = structlog.get_logger("charter.trainer.watch")

WATCH_DIR = "watch"
PROBE_FILE, CHECKS_FILE, BEST_PREFIX = "probe.jsonl", "checks.jsonl", "best-"


def judge_token() -> str:
    return environment_token("CHARTER_JUDGE_TOKEN")


class JudgeScorer:
    """Gold from the judge service: P(the policy's answer is preferred to the reference's) per probe;
    after the first call an identical pair is 0.5 without asking (what the judge's two orders give);
    an empty answer (the judge refuses those) loses to a non-empty one (0 or 1; two empty ones: 0.5);
    a label the judge could not score (an error status) is None."""

    def __init__(self, gold: JudgeGold, seed: int, token: str) -> None:
        self.gold, self.seed, self.token = gold, seed, token
        self.called = False  # the first call sends every pair, so a misconfigured judge fails at once

    def __call__(
        self, prompts: Sequence[Prompt], replies: Sequence[str], references: Sequence[str]
    ) -> list[float | None]:
        from charter.api.judge import STATUS_NAMES
        from charter.datasets.pairs import PairRow, pair_key
        from charter.inference.types import Message

        scores: list[float | None] = [0.5] * len(prompts)
        pairs = []
        for i, (prompt, reply, reference) in enumerate(zip(prompts, replies, references, strict=True)):
            if not reply.strip() or not reference.strip():  # the judge refuses an empty answer: it loses
                scores[i] = 0.5 if not reply.strip() and not reference.strip() else float(bool(reply.strip()))
            elif reply != reference or not self.called:
                conversation = tuple(Message(role=m["role"], content=m["content"]) for m in prompt)
                pairs.append(
                    PairRow(i, pair_key(conversation, reply, reference), conversation, reply, reference)
                )
        if pairs:
            labels = asyncio.run(self._compare(pairs))
            self.called = True
            for position, label in labels.items():
                scored = STATUS_NAMES[label.status] in ("ok", "tie")
                scores[pairs[position].index] = label.p_a if scored else None
        return scores

    async def _compare(self, pairs: list[Any]) -> dict[int, Any]:
        import grpc
        from charter_proto.judge.v1 import judge_pb2

        from charter.client.judge import JudgeClient

        g = self.gold
        options = judge_pb2.JudgeOptions(
            constitution_id=g.constitution_id, principles_per_label=g.principles_per_label, seed=self.seed
        )
        try:
            async with JudgeClient(g.address, token=self.token or None, timeout=900, retries=3) as judge:
                labels: dict[int, Any] = await judge.compare(pairs, options, f"watch:{pairs[0].key}")
                return labels
        except grpc.aio.AioRpcError as err:
            error = {grpc.StatusCode.NOT_FOUND: NotFound, grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument}
            raise error.get(err.code(), FailedPrecondition)(
                f"spec.watch.gold_judge: the judge at {g.address}: {err.code().name}: {err.details()}",
                field="spec.watch.gold_judge",
            ) from None


class RewardModelScorer:
    """Scores with a reward model folder, rendered with its own chat template (`trainer.scoring`)."""

    def __init__(self, folder: str) -> None:
        from charter.trainer.scoring import RewardScorer

        self.scorer = RewardScorer(folder)

    def __call__(
        self, prompts: Sequence[Prompt], replies: Sequence[str], references: Sequence[str]
    ) -> list[float]:
        return list(self.scorer.score(prompts, replies))


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


class Watch:
    """One run's watch. Every process of a multi-process run keeps the schedule; the main process
    generates, scores, reports and writes, and tells the others whether to stop."""

    def __init__(
        self, settings: RewardWatch, *, run_dir: Path, proxy: str, seed: int, tokenizer: Any,
        emit: events.Emitter, max_prompt_length: int | None = None,
    ) -> None:  # fmt: skip
        from accelerate import PartialState

        self.settings, self.proxy_folder, self.seed, self.tokenizer = settings, proxy, seed, tokenizer
        self.emit, self.max_prompt_length = emit, max_prompt_length
        self.folder = run_dir / WATCH_DIR
        self.main = PartialState().is_main_process
        self.detector = DivergenceDetector(settings.patience, settings.min_delta)
        self.done: set[int] = set()
        self.stopped = False
        self.probe: list[Prompt] = []
        self.references: list[str] | None = None
        self._scorers: tuple[Any, Any] | None = None
        self._gold_worked = False

    # -- setting up -------------------------------------------------------------------------------

    def split(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """Fix the probe set (cached in DIR/watch); the prompts left for training."""
        s = self.settings
        if s.probe is None:
            self.probe, training = hold_out(prompts, s.probe_size, self.seed)
        else:
            self.probe, training = read_probe_files(s.probe.paths, s.probe_size), list(prompts)
        path = self.folder / PROBE_FILE
        if path.exists():  # a resumed run: the probe and the reference answers it started with
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
            self.probe, self.references = [r["prompt"] for r in rows], [r["reference"] for r in rows]
        return training

    def prepare(self, model: Any) -> None:
        """The reference policy's answers, from `model` before it trains (made once, then cached)."""
        if self.references is not None or not self.main:
            return
        self.references = self._generate(model)
        rows = [{"prompt": p, "reference": r} for p, r in zip(self.probe, self.references, strict=True)]
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.folder / PROBE_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )

    def resume(self, step: int) -> bool:
        """Continue a run resumed from its checkpoint at `step` (0: from the start); True when the
        checks so far had already stopped it."""
        path, kept = self.folder / CHECKS_FILE, []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    check = json.loads(line)
                except json.JSONDecodeError:  # a line torn by the crash
                    continue
                if check["step"] <= step:
                    kept.append(check)
        if self.main:
            if path.exists():
                write_atomic(path, "".join(json.dumps(c) + "\n" for c in kept))
            for folder, best_step in self._best_folders():
                if best_step > step:
                    shutil.rmtree(folder)
        for check in kept:
            self.done.add(check["step"])
            if check.get("gold") is not None:
                self.detector.add(check["step"], check["proxy"], check["gold"])
        self.stopped = self.settings.stop_on_divergence and self.detector.diverged
        return self.stopped

    # -- checks -----------------------------------------------------------------------------------

    def due(self, step: int, last: int) -> bool:
        every = self.settings.every_steps
        return step not in self.done and (step % every == 0 or step == last)

    def next_check(self, step: int) -> int:
        """The first scheduled check after `step` (the last step is one too)."""
        return step + self.settings.every_steps - step % self.settings.every_steps

    def maybe_check(self, step: int, last: int, model: Any, weights: Any) -> bool:
        """`check` when one is due at `step` (`last`: the run's last step); True when the run should stop."""
        return self.due(step, last) and self.check(step, model, weights)

    def check(self, step: int, model: Any, weights: Any) -> bool:
        """Score the probe with the policy `model` at `step`; True when the run should stop.
        `weights` (with `save_pretrained`) is what a best-gold checkpoint saves."""
        self.done.add(step)
        stop = self._check(step, model, weights) if self.main else False
        self.stopped = _agree(stop)
        return self.stopped

    def _check(self, step: int, model: Any, weights: Any) -> bool:
        assert self.references is not None, "prepare() comes before the first check"
        replies = self.references if step == 0 else self._generate(model)
        proxy_scorer, gold_scorer = self._load_scorers()
        proxy = _mean(proxy_scorer(self.probe, replies, self.references))
        try:
            gold = _mean(gold_scorer(self.probe, replies, self.references))
            self._gold_worked = True
        except CharterError as err:
            if not self._gold_worked:  # a gold scorer that never worked: fail now, not hours in
                raise
            gold = None
            self._warn(f"reward watch: no gold at step {step}: {err}", "trainer.watch.gold_failed", step=step)
        values = {"watch/proxy": proxy, "watch/gold": gold}
        self.emit("metrics", step=step, values=events.finite(values))
        with open(self.folder / CHECKS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "proxy": proxy, "gold": gold}) + "\n")
        log.info("trainer.watch.checked", step=step, proxy=proxy, gold=gold, probes=len(self.probe))
        if proxy is None or gold is None:
            return False
        verdict = self.detector.add(step, proxy, gold)
        s = self.settings
        if verdict.best is verdict.check and s.stop_on_divergence:
            self._save_best(step, weights)
        if not verdict.fired:
            return False
        b = verdict.best
        self._warn(
            f"reward watch: the proxy reward rose while gold fell for {s.patience} check"
            f"{'s' if s.patience > 1 else ''} "
            f"(step {step}: proxy {proxy:.4g}, gold {gold:.4g}; best gold at step {b.step}: proxy "
            f"{b.proxy:.4g}, gold {b.gold:.4g})",
            "trainer.watch.diverged", step=step, best_step=b.step, proxy=proxy, gold=gold,
        )  # fmt: skip
        if s.stop_on_divergence:
            self.emit("log", level="warning", message=f"stopping at step {step}: the model is the best-gold "
                      f"checkpoint, step {b.step}")  # fmt: skip
        return s.stop_on_divergence

    def _warn(self, message: str, event: str, **fields: Any) -> None:
        self.emit("log", level="warning", message=message)
        log.warning(event, message=message, **fields)

    def _generate(self, model: Any) -> list[str]:
        s = self.settings
        return greedy_replies(model, self.tokenizer, self.probe, s.max_new_tokens, self.max_prompt_length)

    def _load_scorers(self) -> tuple[Any, Any]:
        if self._scorers is None:
            s = self.settings
            if s.gold_reward_model is not None:
                gold: Any = RewardModelScorer(s.gold_reward_model)
            else:
                assert s.gold_judge is not None, "spec.check makes sure there is a gold scorer"
                gold = JudgeScorer(s.gold_judge, self.seed, judge_token())
            self._scorers = (RewardModelScorer(self.proxy_folder), gold)
        return self._scorers

    # -- best-gold weights ------------------------------------------------------------------------

    def _best_folders(self) -> list[tuple[Path, int]]:
        found = []
        for path in self.folder.glob(f"{BEST_PREFIX}*"):
            step = path.name.removeprefix(BEST_PREFIX)
            if path.is_dir() and step.isdigit():
                found.append((path, int(step)))
        return sorted(found, key=lambda f: f[1])

    def _save_best(self, step: int, weights: Any) -> None:
        target = self.folder / f"{BEST_PREFIX}{step}"
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        weights.save_pretrained(partial)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)

    def saved(self, step: int) -> None:
        """A checkpoint at `step` is on disk: best-gold weights older than the best are no longer needed."""
        best = self.detector.best
        if self.main and best is not None:
            for folder, best_step in self._best_folders():
                if best_step < best.step:
                    shutil.rmtree(folder)

    def export_best(self, output: Path) -> int:
        """Write the best-gold weights (and the tokenizer) as the run's model; the best check's step."""
        best = self.detector.best
        assert best is not None and self.stopped
        if self.main:
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(self.folder / f"{BEST_PREFIX}{best.step}", output)
            self.tokenizer.save_pretrained(str(output))
        return best.step


def _agree(stop: bool) -> bool:
    """The main process's decision, on every process of a multi-process run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        decision = [stop]
        dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])
    return stop


def checkpoint_step(path: Path | None) -> int:
    """The step of a `checkpoint-<step>` folder (0: none)."""
    return int(path.name.removeprefix("checkpoint-")) if path is not None else 0


class WatchCallback(TrainerCallback):
    """The watch in TRL's GRPO/RLOO trainers: a check when one is due, at the start (the step resumed
    from) and after each optimiser step; a divergence with `stop_on_divergence` stops training."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def _maybe_check(self, state: Any, control: Any, model: Any) -> None:
        step = int(state.global_step)
        due = model is not None and self.watch.due(step, int(state.max_steps))
        if due and self.watch.check(step, model, model):
            control.should_training_stop = True

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._maybe_check(state, control, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._maybe_check(state, control, model)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.saved(int(state.global_step))

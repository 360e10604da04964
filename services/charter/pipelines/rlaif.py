"""Iterated RLAIF (`kind: rlaif`): for i = 1..N, on the current policy —

1. **labels**: two sampled replies per prompt (the iteration's own slice of the prompt file) from the
   current policy, labelled by the AI judge (soft, both orders, K principles) — the RL-CAI pipeline;
2. **route**: the review ledger's routing; only uncertain labels go to people, at most
   `review.human_budget` of them (the most uncertain first); the rest of those are `over_budget`;
3. **train**: DPO from the current policy (its own reference) on the auto-accepted labels, the queued
   labels people have decided, and, with `review.over_budget: train`, the over-budget ones;
4. **eval**: `charter eval policy` of the new policy against the previous one and the start;
5. **gate** (`rlaif_gates`): promote the new policy only if gold did not fall (beyond a tolerance),
   harmlessness rose (or did not fall) and evasiveness did not rise past a bound; else stop and say why.

Every step is recorded in `iterations/<i>/iteration.json` when it finishes, and a re-run of the same
spec skips what is recorded (the labelling and the evaluation also resume inside a step, a DPO run is
found again by its idempotency key). Gate decisions are made again on every run from the stored
figures, so changing a gate re-decides. Local mode only: the judge, the policy's generator and the
trainer run in this process tree; the judge's engine is built once and shared by labelling and
evaluation, and it also serves the starting policy when that is the judge's own model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.app.local import local_services
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.files import write_atomic
from charter.core.settings import CharterSettings
from charter.inference.types import InferenceClient
from charter.pipelines import rl_cai, rlaif_report
from charter.pipelines import rlaif_steps as steps
from charter.pipelines.rlaif_gates import decide, figures
from charter.pipelines.rlaif_spec import LOCAL_ONLY, RlaifSpec

STEPS = ("labels", "route", "train", "eval")


@dataclass
class Summary:
    iterations: list[dict[str, Any]] = field(default_factory=list)
    """One row per iteration reached (the report's rows)."""
    policy: dict[str, Any] = field(default_factory=dict)
    """The promoted policy the loop ends with."""
    stopped: str = ""
    """Why the loop stopped before its last iteration (empty: it ran them all)."""
    steps_done_before: int = 0
    steps_run: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "stopped": self.stopped,
            "iterations": [
                {"iteration": r["iteration"], "promoted": bool(r.get("decision", {}).get("promoted")),
                 "why": r["why"]}
                for r in self.iterations
            ],
            "steps_done_before": self.steps_done_before, "steps_run": self.steps_run,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


class Services:
    """The judge service (one engine for the whole run) and the current policy's generator."""

    def __init__(self, spec: RlaifSpec, settings: CharterSettings, engine: InferenceClient | None) -> None:
        self.spec, self.settings = spec, settings
        self.stack = contextlib.AsyncExitStack()
        self.judge_engine = engine
        self._owns_judge_engine = engine is None
        self._judge: str | None = None
        self._generator: tuple[str, str, contextlib.AsyncExitStack] | None = None
        """(policy version, address, what to close)."""

    def judge_settings(self) -> CharterSettings:
        j = self.spec.judge
        update = {k: v for k, v in (("method", j.method), ("logit_scale", j.logit_scale),
                                    ("contrastive_beta", j.contrastive_beta)) if v is not None}  # fmt: skip
        return self.settings.model_copy(update={"judge": self.settings.judge.model_copy(update=update)})

    async def _engine(self) -> InferenceClient:
        if self.judge_engine is None:
            from charter.inference.factory import build_engine

            self.judge_engine = await asyncio.to_thread(build_engine, self.settings.inference)
        return self.judge_engine

    async def judge(self) -> str:
        if self._judge is None:
            engine = await self._engine()
            self._judge = await self.stack.enter_async_context(
                local_services(self.judge_settings(), ("judge",), engine=engine, drain_seconds=0)
            )
        return self._judge

    async def generator(self, policy: dict[str, Any]) -> str:
        """A generator serving `policy` (the judge's engine when it is the judge's own model)."""
        if self._generator is not None and self._generator[0] == policy["version"]:
            return self._generator[1]
        await self.close_generator()
        stack = contextlib.AsyncExitStack()
        if policy["model"] == self.settings.inference.model:
            engine = await self._engine()
        else:
            from charter.inference.factory import build_engine

            inference = self.settings.inference.model_copy(update={"model": policy["model"]})
            name = f"{self.spec.name}/{policy['version']}"
            engine = await asyncio.to_thread(build_engine, inference, name=name)
            stack.push_async_callback(engine.close)
        address = await stack.enter_async_context(
            local_services(self.settings, ("generator",), engine=engine, drain_seconds=0)
        )
        self._generator = (policy["version"], address, stack)
        return address

    async def close_generator(self) -> None:
        if self._generator is not None:
            await self._generator[2].aclose()
            self._generator = None

    async def close(self) -> None:
        await self.close_generator()
        await self.stack.aclose()
        if self.judge_engine is not None and self._owns_judge_engine:
            await self.judge_engine.close()


@contextlib.asynccontextmanager
async def services(
    spec: RlaifSpec, settings: CharterSettings, engine: InferenceClient | None
) -> AsyncIterator[Services]:
    s = Services(spec, settings, engine)
    try:
        yield s
    finally:
        await s.close()


def _check_output(spec: RlaifSpec) -> None:
    manifest = spec.output / "rlaif.json"
    digest = spec.digest()
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("spec_digest")
        if recorded != digest:
            raise FailedPrecondition(
                f"{spec.output} holds the output of a different rlaif spec ({recorded}); only iterations "
                "and gates may change between runs: choose another output folder or delete this one"
            )
    else:
        write_atomic(manifest, json.dumps({"spec_digest": digest, "name": spec.name}, indent=2) + "\n")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


async def run(
    spec: RlaifSpec,
    settings: CharterSettings,
    *,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_progress: Callable[[int], None] = lambda n: None,
    on_step: Callable[[str], None] = lambda line: None,
    engine: InferenceClient | None = None,
) -> Summary:
    """Run (or resume) the loop; writes report.md, report.json and the charts; returns what it did.
    `engine`: an already loaded engine of `settings.inference.model` for the judge (kept open)."""
    if spec.services.mode != "local":
        raise InvalidArgument(LOCAL_ONLY, field="services.mode", value=spec.services.mode)
    started = time.perf_counter()
    _check_output(spec)
    summary = Summary()
    root = spec.output / "iterations"
    states = {i: _load(root / str(i) / "iteration.json") for i in range(1, spec.iterations + 1)}
    summary.steps_done_before = sum(len(s.get("steps", {})) for s in states.values())
    on_start(len(STEPS) * spec.iterations, summary.steps_done_before)
    start = {"version": "p0", "iteration": 0, "model": spec.policy, "run_id": None, "parent": None}
    policy, history = start, [start]
    async with services(spec, settings, engine) as svc:
        for i in range(1, spec.iterations + 1):
            folder = root / str(i)
            state = states[i] or {"iteration": i, "spec_digest": spec.digest(), "steps": {}}
            if state.get("policy_in", policy)["version"] != policy["version"]:
                raise FailedPrecondition(
                    f"{folder}: iteration {i} started from {state['policy_in']['version']}, "
                    f"not {policy['version']}; delete the folder to redo it"
                )
            state["policy_in"] = policy
            row = await _iteration(
                spec, settings, svc, i, folder, state, history, summary, on_progress, on_step
            )
            summary.iterations.append(row)
            if row.get("decision", {}).get("promoted"):
                policy = state["policy_out"]
                history.append(policy)
            else:
                summary.stopped = f"iteration {i}: {row['why']}"
                break
    summary.policy = policy
    summary.seconds = time.perf_counter() - started
    rlaif_report.write(spec, summary)
    return summary


async def _iteration(
    spec: RlaifSpec, settings: CharterSettings, svc: Services, i: int, folder: Path, state: dict[str, Any],
    history: list[dict[str, Any]], summary: Summary, on_progress: Callable[[int], None],
    on_step: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    done = state["steps"]
    policy = state["policy_in"]
    labels_dir = folder / "labels"

    def finish(step: str, result: dict[str, Any], line: str) -> None:
        done[step] = result
        write_atomic(folder / "iteration.json", json.dumps(state, indent=2) + "\n")
        summary.steps_run += 1
        on_progress(1)
        on_step(f"iteration {i}: {step}: {line}")

    if "labels" not in done:
        prompts = steps.write_prompts(spec, i, folder / "prompts.jsonl")
        rl = steps.labels_spec(spec, i, folder / "prompts.jsonl", labels_dir,
                               generator=await svc.generator(policy), judge=await svc.judge())  # fmt: skip
        s = await rl_cai.run(rl, settings)
        await svc.close_generator()
        records = steps.read_jsonl(labels_dir / "records.jsonl")
        digests = sorted({r["label"]["constitution"].get("digest", "") for r in records})
        finish("labels", {"prompts": prompts, "labelled": len(records), "row_errors": s.row_errors,
                          "statuses": dict(s.statuses), "swap_consistent": s.swap_consistent,
                          "constitution_digest": digests[0] if len(digests) == 1 else digests},
               f"{len(records)} pairs labelled from {prompts} prompts by {policy['version']}")  # fmt: skip
    tags = {"iteration": i, "policy_version": policy["version"]}
    records = steps.read_jsonl(labels_dir / "records.jsonl")
    database = spec.review.database or f"sqlite:///{(spec.output / 'review.db').resolve()}"
    if "route" not in done:
        routed = steps.route(records, settings.review.routing, spec.review.human_budget, tags)
        submitted = await asyncio.to_thread(steps.submit, database, settings.review.routing, records, routed)
        steps.write_jsonl(folder / "routing.jsonl", routed)
        routes = {name: sum(1 for x in routed if x["route"] == name)
                  for name in ("auto_accepted", "human_review", "rejected", steps.OVER_BUDGET)}  # fmt: skip
        finish("route", {"routes": routes, "submitted": submitted, "ledger": database},
               ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in routes.items()))  # fmt: skip
    row: dict[str, Any] = {"iteration": i, "policy_in": policy["version"], "steps": done}
    if "train" not in done:
        routed = steps.read_jsonl(folder / "routing.jsonl")
        rows, used = await asyncio.to_thread(
            steps.training_rows, records, routed, database, spec.review.over_budget,
            {**tags, "constitution_digest": done["labels"]["constitution_digest"]},
        )  # fmt: skip
        if not rows:
            over = sum(1 for x in routed if x["route"] == steps.OVER_BUDGET)
            fate = "dropped" if spec.review.over_budget == "drop" else "trained on, none with a winner"
            why = (
                f"no labels to train on: {used['awaiting_people']} wait for people, {over} over the human "
                f"budget ({fate}); review the queued ones (charter review) or raise review.human_budget, "
                "then run again"
            )
            return {**row, "why": why}
        steps.write_jsonl(folder / "train.jsonl", rows)
        result = await steps.train(spec, i, policy["model"], folder / "train.jsonl", settings)
        state["policy_out"] = {"version": f"p{i}", "iteration": i, "model": result["model"],
                               "run_id": result["run_id"], "parent": policy["version"]}  # fmt: skip
        finish("train", {**result, "used": used}, f"DPO run {result['run_id']} on {len(rows)} labels")
    new = state["policy_out"]
    row["policy"], row["policy_out"] = new["version"], new
    if "eval" not in done:
        previous = history[-1]
        policies = [history[0], *([previous] if previous is not history[0] else []), new]
        exclude = [spec.output / "iterations" / str(k) / "labels" / "records.jsonl" for k in range(1, i + 1)]
        e_spec = steps.eval_spec(spec, policies, judge=await svc.judge(), exclude=exclude)
        from charter.evaluation.policy import evaluate

        report = await evaluate(e_spec, settings)
        judgments = steps.read_jsonl(e_spec.output / "judgments" / "records.jsonl")
        (folder / "eval").mkdir(parents=True, exist_ok=True)
        for name in ("eval.json", "report.md", "winrate.png", "elo.png"):
            if (e_spec.output / name).exists():
                shutil.copy2(e_spec.output / name, folder / "eval" / name)
        fig = figures(report, judgments, new=new["version"], previous=previous["version"], start="p0",
                      seed=spec.seed, resamples=spec.evaluation.bootstrap_resamples)  # fmt: skip
        finish(
            "eval",
            {"figures": fig, "report": str(folder / "eval" / "report.md")},
            f"{new['version']} vs {previous['version']}: win rate {fig['win_rate_vs_previous']['rate']}",
        )
    decision = decide(done["eval"]["figures"], spec.gates.for_iteration(i))
    state["decision"] = decision.as_dict()
    write_atomic(folder / "iteration.json", json.dumps(state, indent=2) + "\n")
    on_step(f"iteration {i}: gates: {decision.why()}")
    return {**row, "decision": state["decision"], "why": decision.why()}

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
figures, so changing a gate re-decides. The loop is one; how each step is done is injected
(`LoopServices`): local mode (`rlaif_local`) runs the judge, the policy's generator, the ledger and the
trainer in this process tree; remote mode (`rlaif_remote`) drives the deployed services, and a
promotion swaps the deployed generator to the new policy's run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from charter.core.errors import FailedPrecondition
from charter.core.files import write_atomic
from charter.core.settings import CharterSettings
from charter.inference.types import InferenceClient
from charter.pipelines import rl_cai, rlaif_report
from charter.pipelines import rlaif_steps as steps
from charter.pipelines.rlaif_gates import decide, figures
from charter.pipelines.rlaif_spec import RlaifSpec

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


class LoopServices(Protocol):
    """The step implementations the loop is given: `rlaif_local.LocalServices` (this process tree) or
    `rlaif_remote.RemoteServices` (deployed services). One loop, two ways of doing its steps."""

    mode: str

    async def judge(self) -> str: ...
    def judge_token_file(self) -> Path | None: ...
    async def generator(self, policy: dict[str, Any]) -> str: ...
    async def close_generator(self) -> None: ...
    async def route(
        self, iteration: int, records: Sequence[Mapping[str, Any]], tags: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...
    async def training_rows(
        self, records: Sequence[Mapping[str, Any]], routed: Sequence[Mapping[str, Any]],
        route: Mapping[str, Any], tags: Mapping[str, Any],
    ) -> tuple[list[dict[str, Any]], dict[str, int]]: ...  # fmt: skip
    async def train(self, iteration: int, base_model: str, data: Path) -> dict[str, Any]: ...
    async def promote(self, policy: Mapping[str, Any]) -> dict[str, Any]: ...
    async def close(self) -> None: ...


@contextlib.asynccontextmanager
async def services(
    spec: RlaifSpec, settings: CharterSettings, engine: InferenceClient | None
) -> AsyncIterator[LoopServices]:
    """The mode's step implementations (`services.mode`)."""
    s: LoopServices
    if spec.services.mode == "remote":
        from charter.pipelines.rlaif_remote import RemoteServices

        s = RemoteServices(spec, settings)
    else:
        from charter.pipelines.rlaif_local import LocalServices

        s = LocalServices(spec, settings, engine)
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


async def _promote(
    svc: LoopServices, policy: dict[str, Any], root: Path, on_step: Callable[[str], None]
) -> None:
    """The loop's policy is served (remote: the generator swaps to its run unless it serves it already;
    recorded as `served` in its iteration). Once, at the end: each iteration's sampling has already
    made the generator serve the policy it needed, so promoting each policy as decided would only
    swap back and forth when a finished loop is run again."""
    served = await svc.promote(policy)
    if not served:
        return
    where = f"iteration {policy['iteration']}: " if policy["iteration"] else ""
    if policy["iteration"]:
        path = root / str(policy["iteration"]) / "iteration.json"
        write_atomic(path, json.dumps({**_load(path), "served": served}, indent=2) + "\n")
    on_step(f"{where}the generator serves {served['policy_version']}")


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
    `engine`: local mode, an already loaded engine of `settings.inference.model` for the judge (kept
    open)."""
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
            state["policy_in"] = state.get("policy_in") or policy  # as recorded (remote: its policy_version)
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
        await _promote(svc, policy, root, on_step)
    summary.policy = policy
    summary.seconds = time.perf_counter() - started
    rlaif_report.write(spec, summary)
    return summary


async def _iteration(
    spec: RlaifSpec, settings: CharterSettings, svc: LoopServices, i: int, folder: Path,
    state: dict[str, Any], history: list[dict[str, Any]], summary: Summary,
    on_progress: Callable[[int], None], on_step: Callable[[str], None],
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
    if "route" not in done:
        routed, submitted = await svc.route(i, records, tags)
        steps.write_jsonl(folder / "routing.jsonl", routed)
        routes = {name: sum(1 for x in routed if x["route"] == name)
                  for name in ("auto_accepted", "human_review", "rejected", steps.OVER_BUDGET)}  # fmt: skip
        finish("route", {"routes": routes, **submitted},
               ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in routes.items()))  # fmt: skip
    row: dict[str, Any] = {"iteration": i, "policy_in": policy["version"], "steps": done}
    if "train" not in done:
        routed = steps.read_jsonl(folder / "routing.jsonl")
        digest = done["labels"]["constitution_digest"]
        tagged = {**tags, "constitution_digest": digest}
        rows, used = await svc.training_rows(records, routed, done["route"], tagged)
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
        result = await svc.train(i, policy["model"], folder / "train.jsonl")
        state["policy_out"] = {"version": f"p{i}", "iteration": i, "model": result["model"],
                               "run_id": result["run_id"], "parent": policy["version"]}  # fmt: skip
        finish("train", {**result, "used": used}, f"DPO run {result['run_id']} on {len(rows)} labels")
    new = state["policy_out"]
    row["policy"], row["policy_out"] = new["version"], new
    if "eval" not in done:
        previous = history[-1]
        policies = [history[0], *([previous] if previous is not history[0] else []), new]
        exclude = [spec.output / "iterations" / str(k) / "labels" / "records.jsonl" for k in range(1, i + 1)]
        e_spec = steps.eval_spec(spec, policies, judge=await svc.judge(), exclude=exclude,
                                 judge_token_file=svc.judge_token_file())  # fmt: skip
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

"""A training run's progress as Prometheus metrics, from the trainer service's run lifecycle: the step
and total steps of each running run, and how many runs ended in each state (the dashboard's training
row and the `CharterTrainingRunFailed` alert, deploy/components/monitoring)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from charter.core import metrics
from charter.trainer.runs import TERMINAL, Run, RunEvent, RunState, StateEvent


def export(run: Run, recorded: Sequence[RunEvent]) -> None:
    """The run's progress as Prometheus metrics (`charter_trainer_run_step` / `_total_steps` while it
    runs; `charter_trainer_runs_ended_total` once, when it ends)."""
    algorithm = run.spec.algorithm or "unknown"
    if run.state in TERMINAL:
        if any(isinstance(e.kind, StateEvent) and e.kind.state in TERMINAL for e in recorded):
            metrics.TRAINER_RUNS_ENDED.labels(state=run.state.label, algorithm=algorithm).inc()
        for gauge in (metrics.TRAINER_RUN_STEP, metrics.TRAINER_RUN_TOTAL_STEPS):
            with contextlib.suppress(KeyError):
                gauge.remove(run.id, algorithm)
    elif run.state == RunState.RUNNING:
        metrics.TRAINER_RUN_STEP.labels(run_id=run.id, algorithm=algorithm).set(run.step)
        metrics.TRAINER_RUN_TOTAL_STEPS.labels(run_id=run.id, algorithm=algorithm).set(run.total_steps)

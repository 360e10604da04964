"""A training run's progress as Prometheus metrics (`charter.trainer.run_metrics`): step and total
steps while it runs, removed when it ends, and one count per run that ends, by state."""

from __future__ import annotations

from charter.trainer import run_metrics
from charter.trainer.runs import Run, RunEvent, RunSpec, RunState, StateEvent
from prometheus_client import REGISTRY


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_run_reports_its_steps_while_it_runs_and_counts_once_when_it_ends() -> None:
    run = Run(
        id="r-metrics-test-1", spec=RunSpec(algorithm="dpo"), state=RunState.RUNNING, step=3, total_steps=8
    )
    labels = {"run_id": run.id, "algorithm": "dpo"}
    run_metrics.export(run, [])
    assert value("charter_trainer_run_step", **labels) == 3
    assert value("charter_trainer_run_total_steps", **labels) == 8
    before = value("charter_trainer_runs_ended_total", state="failed", algorithm="dpo") or 0.0
    run.state = RunState.FAILED
    ended = [RunEvent(run.id, 9, 0.0, StateEvent(state=RunState.FAILED, reason="worker exited 1"))]
    run_metrics.export(run, ended)
    assert value("charter_trainer_runs_ended_total", state="failed", algorithm="dpo") == before + 1
    assert value("charter_trainer_run_step", **labels) is None  # an ended run leaves the gauges
    run_metrics.export(run, [])  # a later change to an ended run (a log line) counts nothing
    assert value("charter_trainer_runs_ended_total", state="failed", algorithm="dpo") == before + 1

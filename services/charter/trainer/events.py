"""How a training worker reports to the trainer service: one JSON object per line on stdout, after a
fixed prefix, so the service can follow a local subprocess and a Kubernetes pod's log the same way
(other output — library warnings, progress bars — passes through as plain log text).

    @charter-event {"type": "metrics", "step": 3, "values": {"loss": 0.61, "learning_rate": 1e-05}}

Types and their fields:

- `metrics`: `step`, `values` (name → number)
- `checkpoint`: `step`, `path` (a folder the run can resume from)
- `progress`: `total_steps`
- `data`: `cursor_start`, `cursor_end` (review-stream positions the run trains on), `rows`,
  `labels_read`, `skipped` (reason → count), `round` (continuous runs: the round it is for)
- `round`: a continuous run published a round — `round`, `cursor_start`, `cursor_end`, `rows`,
  `labels_read`, `skipped`, `model_dir`, `step` (`charter.trainer.rounds.Published`)
- `log`: `level`, `message`
- `error`: `message` (why the worker is about to exit non-zero)
- `finished`: `output_dir` (the trained model)
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, TextIO

PREFIX = "@charter-event "
TYPES = ("metrics", "checkpoint", "progress", "data", "round", "log", "error", "finished")


def encode(kind: str, **fields: Any) -> str:
    if kind not in TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return PREFIX + json.dumps({"type": kind, **fields}, separators=(",", ":"), allow_nan=False)


def parse(line: str) -> dict[str, Any] | None:
    """The event on `line`, or None for a line that is not one (plain output, a torn write)."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") not in TYPES:
        return None
    return event


def finite(values: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a metrics dict (what a `metrics` event may carry)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class Emitter:
    """Writes events to `stream` (stdout by default), one flushed line each; only the main process of
    a multi-process run reports."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled

    def __call__(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self.stream.write(encode(kind, **fields) + "\n")
        self.stream.flush()

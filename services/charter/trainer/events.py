"""How a training worker reports to the trainer service: one JSON object per line on stdout, after a
prefix, so the service can follow a local subprocess and a Kubernetes pod's log the same way (other
output — library warnings, progress bars — passes through as plain log text).

    @charter-event/3f9c…e1 {"type": "metrics", "step": 3, "values": {"loss": 0.61, "learning_rate": 1e-05}}

The part after the slash is the attempt's nonce: a random value the service draws at each launch
(`new_nonce`), hands the worker in `CHARTER_EVENT_NONCE` (read once, into its `Emitter`) and keeps
with the attempt in the run store. The service accepts only lines carrying that attempt's nonce, so
text the worker merely prints — a training row, a label echoed by a library, a warning quoting data
— cannot forge an event (a fake `finished`, metrics, an `error`), whatever it contains. The prefix
may start anywhere in a line: a progress bar drawn with carriage returns shares the line with the
event printed after it.

Without a nonce (a worker run by hand; a run launched before nonces, whose attempt has none stored)
the prefix is the bare `@charter-event ` and nothing proves where a line came from.

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
import re
import secrets
import sys
from typing import Any, TextIO

TAG = "@charter-event"
NONCE_ENV = "CHARTER_EVENT_NONCE"
"""The worker's environment variable that carries its attempt's nonce."""
TYPES = ("metrics", "checkpoint", "progress", "data", "round", "log", "error", "finished")
_NONCE = re.compile(r"[0-9a-f]{16,64}")


def new_nonce() -> str:
    """A fresh nonce for one launch (128 random bits, hex)."""
    return secrets.token_hex(16)


def prefix(nonce: str = "") -> str:
    """What starts an event of the attempt with `nonce` ("": the bare, unauthenticated prefix)."""
    if not nonce:
        return f"{TAG} "
    if not _NONCE.fullmatch(nonce):
        raise ValueError(f"an event nonce is 16 to 64 lowercase hex digits, not {nonce!r}")
    return f"{TAG}/{nonce} "


def encode(kind: str, /, nonce: str = "", **fields: Any) -> str:
    if kind not in TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return prefix(nonce) + json.dumps({"type": kind, **fields}, separators=(",", ":"), allow_nan=False)


def parse(line: str, nonce: str = "") -> dict[str, Any] | None:
    """The event on `line` from the attempt with `nonce`, or None for a line that is not one (plain
    output, a torn write, a line with another nonce or none)."""
    head = prefix(nonce)
    start = line.find(head)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(head) :])
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
    """Writes events to `stream` (stdout by default), one flushed line each, with the attempt's
    `nonce`; only the main process of a multi-process run reports."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, nonce: str = "") -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.nonce = nonce
        prefix(nonce)  # a malformed nonce fails at start, not at the first event

    def __call__(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self.stream.write(encode(kind, self.nonce, **fields) + "\n")
        self.stream.flush()

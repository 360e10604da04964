"""Reading a worker's state from Kubernetes objects: the worker container's status in its pod, whether
it started, ended, failed or cannot start, a pod's node rank in an indexed Job, the Job's terminal
conditions and whether all its indexes succeeded, the worker's last `error` event in
its log, and `LogCursor`, which lets a followed log be reopened without repeats or gaps.
"""

from __future__ import annotations

import time

from kubernetes import client as k8s

from charter.trainer import events
from charter.trainer.kubernetes.manifest import CONTAINER

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
"""The label (and annotation) the Job controller gives each pod of an indexed Job."""
# a container waiting for one of these does not start by waiting longer
CANNOT_START = frozenset(
    {"ErrImageNeverPull", "InvalidImageName", "ImagePullBackOff", "CreateContainerConfigError"}
)


def last_error(text: str, nonce: str = "") -> str | None:
    """The message of the last `error` event (of the attempt with `nonce`) in a worker's output."""
    for line in reversed(text.splitlines()):
        event = events.parse(line, nonce)
        if event is not None and event["type"] == "error":
            return str(event.get("message", ""))
    return None


def worker_status(pod: k8s.V1Pod | None) -> k8s.V1ContainerStatus | None:
    if pod is None or pod.status is None:
        return None
    return next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)


def phase(pod: k8s.V1Pod) -> str | None:
    return pod.status.phase if pod.status else None


def started(pod: k8s.V1Pod) -> bool:
    status = worker_status(pod)
    state = status.state if status else None
    return bool(state and (state.running or state.terminated)) or phase(pod) in ("Succeeded", "Failed")


def terminated(pod: k8s.V1Pod) -> bool:
    status = worker_status(pod)
    ended = bool(status and status.state and status.state.terminated)
    return ended or phase(pod) in ("Succeeded", "Failed")


def cannot_start(pod: k8s.V1Pod | None) -> str | None:
    status = worker_status(pod)
    waiting = status.state.waiting if status and status.state else None
    if pod is None or waiting is None or waiting.reason not in CANNOT_START:
        return None
    return joined(f"worker pod {name_of(pod)} cannot start", waiting.reason, waiting.message)


def name_of(obj: k8s.V1Pod | k8s.V1Job) -> str:
    """The object's name: the API server returns no object without one."""
    assert obj.metadata is not None and obj.metadata.name is not None
    return obj.metadata.name


def joined(*parts: str | None) -> str:
    return ": ".join(part for part in parts if part)


def created(pod: k8s.V1Pod) -> tuple[float, str]:
    stamp = pod.metadata.creation_timestamp if pod.metadata else None
    return (stamp.timestamp() if stamp else 0.0), name_of(pod)


def completion_index(pod: k8s.V1Pod) -> int | None:
    """The pod's index in an indexed Job (its node rank); None for a pod of a plain Job."""
    meta = pod.metadata
    if meta is None:
        return None
    value = (meta.labels or {}).get(INDEX_KEY) or (meta.annotations or {}).get(INDEX_KEY)
    return int(value) if value is not None and value.isdigit() else None


def completions(job: k8s.V1Job) -> int:
    """How many pods must succeed: the nodes of a run on several nodes, else 1."""
    return (job.spec.completions if job.spec else None) or 1


def all_succeeded(job: k8s.V1Job) -> bool:
    """Every index succeeded. A Job's Complete condition alone does not say so: a template's
    successPolicy can complete an indexed Job once some indexes have."""
    succeeded = (job.status.succeeded if job.status else None) or 0
    return succeeded >= completions(job)


def ended_at(pod: k8s.V1Pod) -> float:
    """When the worker container ended (infinity while it runs): the first to fail is the cause."""
    status = worker_status(pod)
    ended = status.state.terminated if status and status.state else None
    stamp = ended.finished_at if ended else None
    return stamp.timestamp() if stamp else float("inf")


def failed(pod: k8s.V1Pod) -> bool:
    status = worker_status(pod)
    ended = status.state.terminated if status and status.state else None
    return (ended is not None and ended.exit_code != 0) or phase(pod) == "Failed"


def finished(job: k8s.V1Job) -> dict[str, k8s.V1JobCondition]:
    """The Job's terminal conditions that hold (Complete or Failed; not the interim FailureTarget)."""
    conditions = job.status.conditions if job.status else None
    return {c.type: c for c in conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"}


class LogCursor:
    """Which log lines were already yielded, by their kubelet timestamps, so that a log stream can be
    reopened (it broke, or stayed silent past the read timeout) without repeats or gaps."""

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.count = 0  # lines yielded with exactly the last timestamp
        self.replayed = 0  # lines with that timestamp seen in the current stream
        self.arrived = 0.0  # monotonic time the last line arrived

    def reopen(self, margin: float) -> int | None:
        """The `sinceSeconds` to reopen the log with (None: from the start). Measured on this
        machine's clock, so a node's skewed clock does not matter; the margin covers latency."""
        self.replayed = 0
        return None if self.last is None else int(time.monotonic() - self.arrived + margin) + 1

    def fresh(self, stamp: str) -> bool:
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        key = (whole, fraction.ljust(9, "0"))
        if self.last is not None and key < self.last:
            return False
        if key == self.last:
            self.replayed += 1
            if self.replayed <= self.count:
                return False
            self.count += 1
        else:
            self.last, self.count, self.replayed = key, 1, 1
        self.arrived = time.monotonic()
        return True


def fresh_line(cursor: LogCursor, raw: bytes) -> str | None:
    """A timestamped log line's text, or None if it was yielded before."""
    stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
    return text.removesuffix("\r") if cursor.fresh(stamp) else None

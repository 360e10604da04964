"""Training workers as Kubernetes Jobs. `KubernetesExecutor` submits one `batch/v1` Job per run
attempt through the official client (its sync API, called through `asyncio.to_thread`), follows the
Job's pod log, and reads the outcome from the Job's status.

For attempt N of run R it creates, in `JobOptions.namespace`:

- a ConfigMap `charter-run-R-N` with `spec.json` (the RunSpec), mounted at /etc/charter/run. Once the
  Job exists, the Job becomes the ConfigMap's owner, so the ConfigMap is deleted with the Job (on
  cancel, or through `ttlSecondsAfterFinished`);
- a Job `charter-run-R-N` rendered from `job-template.yaml` (or the operator's own template):
  backoffLimit 0 and restartPolicy Never (the trainer service decides about resumes), a hardened
  non-root pod, GPUs, cpu and memory from `spec.resources`, and the runs PVC mounted at `runs_mount`.
  The PVC holds every run's folder, so checkpoints outlive the pod and a resume finds them.

The handle is `<namespace>/<job-name>`. Object names are DNS-1123 labels of at most 63 characters.
Run ids like `r-0123abcd...` are used as they are; any other id is sanitised and given a hash
suffix. The exact id is kept in the `charter.dev/run-id` annotation.

RBAC: the trainer service's own service account needs this Role in the namespace, and nothing
cluster-wide:

    - apiGroups: ["batch"]   resources: ["jobs"]        verbs: ["create", "get", "delete"]
    - apiGroups: [""]        resources: ["configmaps"]  verbs: ["create", "patch", "delete"]
    - apiGroups: [""]        resources: ["pods"]        verbs: ["list"]
    - apiGroups: [""]        resources: ["pods/log"]    verbs: ["get"]

The ConfigMap's owner reference does not set `blockOwnerDeletion`, so no `jobs/finalizers`
permission is needed (with the OwnerReferencesPermissionEnforcement admission plugin, setting an
owner needs `delete` on the ConfigMap, which the Role has). The worker pod's own service account
(`JobOptions.service_account`) needs no RBAC: its token is not mounted.

    options = JobOptions(namespace="charter", image="ghcr.io/acme/charter-trainer:0.1.0",
                         runs_pvc="charter-runs", env_from_secret="charter-trainer-env")
    executor = KubernetesExecutor(options)  # in-cluster config, else ~/.kube/config
    handle = await executor.launch(Launch("r-0123abcd", 1, spec_json, resume=False))
    async for line in executor.lines(handle): ...
    outcome = await executor.outcome(handle)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import structlog
import urllib3
import yaml
from charter_proto.trainer.v1 import trainer_pb2
from google.protobuf import json_format
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from charter.core.errors import CharterError, FailedPrecondition, InvalidArgument, Unavailable
from charter.trainer import events
from charter.trainer.executor import Launch, Outcome, exit_reason, worker_command

log = structlog.get_logger("charter.trainer")

TEMPLATE = Path(__file__).with_name("job-template.yaml")
APP = "charter-trainer-worker"
CONTAINER = "worker"
SPEC_DIR = "/etc/charter/run"
HOME = "/home/charter"
UID = 10001
_PREFIX = "charter-run-"
_SLUG_MAX = 63 - len(_PREFIX) - len("-99999")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")
# a container waiting for one of these does not start by waiting longer
_CANNOT_START = frozenset(
    {"ErrImageNeverPull", "InvalidImageName", "ImagePullBackOff", "CreateContainerConfigError"}
)
_TRANSIENT = (urllib3.exceptions.HTTPError, OSError)
_RESERVED_MOUNTS = ("", SPEC_DIR, HOME, "/tmp", "/dev/shm")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class JobOptions:
    """Where and how worker Jobs run. The trainer service builds this once from its settings."""

    namespace: str
    image: str
    """The trainer image, pinned: a version tag other than `latest`, or a digest."""
    runs_pvc: str
    """The PVC holding every run's folder (ReadWriteMany, unless all workers share a node)."""
    runs_mount: str = "/runs"
    service_account: str = ""
    """The worker pod's service account ("" = the namespace default). It needs no RBAC."""
    template: Path | None = None
    """A Jinja2 Job template; None means the packaged `job-template.yaml`."""
    image_pull_secrets: tuple[str, ...] = ()
    env_from_secret: str = ""
    """A Secret whose keys become the worker's environment, e.g. CHARTER_REVIEW_TOKEN."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    ttl_seconds_after_finished: int | None = 86_400
    """How long a finished Job (its pod, its log, its ConfigMap) is kept for the service to read."""
    active_deadline_seconds: int | None = None
    shm_size: str = ""
    """Size limit of the memory-backed /dev/shm ("" = none). It counts against the memory limit."""

    def __post_init__(self) -> None:
        # accept what settings hold (lists, a str path) and keep immutable copies
        object.__setattr__(self, "image_pull_secrets", tuple(self.image_pull_secrets))
        object.__setattr__(self, "tolerations", tuple(dict(t) for t in self.tolerations))
        object.__setattr__(self, "node_selector", dict(self.node_selector))
        if self.template is not None:
            object.__setattr__(self, "template", Path(self.template))
        if not _DNS_LABEL.fullmatch(self.namespace):
            raise ValueError(f"JobOptions.namespace={self.namespace!r} is not a DNS-1123 label")
        name, at, digest = self.image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        if not name or tag == "latest" or not (tag or (at and digest)):
            raise ValueError(
                f"JobOptions.image={self.image!r}: pin the trainer image to a version tag other than "
                "'latest' or to a digest (name:0.1.0 or name@sha256:...)"
            )
        if not self.runs_pvc:
            raise ValueError("JobOptions.runs_pvc: name the PVC that holds the runs' folders")
        if not self.runs_mount.startswith("/") or self.runs_mount.rstrip("/") in _RESERVED_MOUNTS:
            raise ValueError(f"JobOptions.runs_mount={self.runs_mount!r} must be an absolute path of its own")
        for key in ("ttl_seconds_after_finished", "active_deadline_seconds"):
            value = getattr(self, key)
            least = 1 if key == "active_deadline_seconds" else 0
            if value is not None and value < least:
                raise ValueError(f"JobOptions.{key}={value} must be at least {least} (or None)")
        if self.shm_size and not _QUANTITY.fullmatch(self.shm_size):
            raise ValueError(f"JobOptions.shm_size={self.shm_size!r} is not a Kubernetes quantity")


def run_dir(options: JobOptions, run_id: str) -> str:
    """The run's folder in the worker (on the runs PVC)."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"{run_id=} cannot name a folder under {options.runs_mount}")
    return f"{options.runs_mount.rstrip('/')}/{run_id}"


def _slug(run_id: str) -> str:
    """The run id as it appears in names and labels. A hash suffix keeps two ids that sanitise
    alike apart."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    if slug == run_id and len(slug) <= _SLUG_MAX:
        return slug
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return "-".join(filter(None, [slug[: _SLUG_MAX - len(digest) - 1].strip("-"), digest]))


def object_name(run_id: str, attempt: int) -> str:
    """The Job's and the ConfigMap's name for one attempt: a DNS-1123 label of at most 63 characters."""
    if not 1 <= attempt <= 99999:
        raise ValueError(f"{attempt=} must lie in [1, 99999]")
    return f"{_PREFIX}{_slug(run_id)}-{attempt}"


def _metadata(launch: Launch, options: JobOptions) -> dict[str, Any]:
    return {
        "name": object_name(launch.run_id, launch.attempt),
        "namespace": options.namespace,
        "labels": {
            "app.kubernetes.io/name": APP,
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/part-of": "charter",
            "charter.dev/run-id": _slug(launch.run_id),
            "charter.dev/attempt": str(launch.attempt),
        },
        "annotations": {"charter.dev/run-id": launch.run_id},
    }


def _container_resources(resources: trainer_pb2.Resources) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    for key in ("cpu", "memory"):
        value = getattr(resources, key)
        if not value:
            continue
        if not _QUANTITY.fullmatch(value):
            raise InvalidArgument(
                f"spec.resources.{key}={value!r} is not a Kubernetes quantity (e.g. '8', '500m', '32Gi')",
                field=f"spec.resources.{key}",
                value=value,
            )
        requests[key] = value
    limits = dict(requests)
    if resources.gpus:
        limits["nvidia.com/gpu"] = str(resources.gpus)  # an extended resource's request is its limit
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _command(launch: Launch, options: JobOptions, resources: trainer_pb2.Resources) -> list[str]:
    processes = resources.processes or resources.gpus or 1
    if processes > max(resources.gpus, 1):
        raise InvalidArgument(
            f"spec.resources.processes={processes} needs a GPU per process, but gpus={resources.gpus}",
            field="spec.resources.processes",
            value=processes,
        )
    command = worker_command(
        "python", f"{SPEC_DIR}/spec.json", run_dir(options, launch.run_id), launch.resume
    )
    if processes == 1:
        return command
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), *command[1:]]


def _template(path: Path) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(path.read_text(encoding="utf-8"))


def job_manifest(launch: Launch, options: JobOptions, resources: trainer_pb2.Resources) -> dict[str, Any]:
    """The Job for one attempt, rendered from the template and checked for what the executor
    relies on."""
    meta = _metadata(launch, options)
    path = options.template or TEMPLATE
    text = _template(path).render(
        **meta,
        image=options.image,
        service_account=options.service_account,
        image_pull_secrets=list(options.image_pull_secrets),
        node_selector=dict(options.node_selector),
        tolerations=[dict(t) for t in options.tolerations],
        env_from_secret=options.env_from_secret,
        ttl_seconds_after_finished=options.ttl_seconds_after_finished,
        active_deadline_seconds=options.active_deadline_seconds,
        command=_command(launch, options, resources),
        resources=_container_resources(resources),
        configmap=meta["name"],
        spec_dir=SPEC_DIR,
        runs_pvc=options.runs_pvc,
        runs_mount=options.runs_mount,
        home=HOME,
        uid=UID,
        shm={"medium": "Memory", **({"sizeLimit": options.shm_size} if options.shm_size else {})},
    )
    job = yaml.safe_load(text)
    _check_job(job, meta, path)
    return job


def _check_job(job: Any, meta: dict[str, Any], path: Path) -> None:
    def dig(*keys: str) -> Any:
        value = job
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    containers = dig("spec", "template", "spec", "containers") or []
    problems = [
        f"{label} is {actual!r}, want {wanted!r}"
        for label, actual, wanted in [
            ("apiVersion", dig("apiVersion"), "batch/v1"),
            ("kind", dig("kind"), "Job"),
            ("metadata.name", dig("metadata", "name"), meta["name"]),
            ("metadata.namespace", dig("metadata", "namespace"), meta["namespace"]),
            ("spec.backoffLimit", dig("spec", "backoffLimit"), 0),
            ("spec.template.spec.restartPolicy", dig("spec", "template", "spec", "restartPolicy"), "Never"),
        ]
        if actual != wanted
    ]
    if not any(isinstance(c, dict) and c.get("name") == CONTAINER for c in containers):
        problems.append(f"no container is named {CONTAINER!r}")
    if problems:
        raise ValueError(f"Job template {path}: " + "; ".join(problems))


def spec_configmap(launch: Launch, options: JobOptions) -> dict[str, Any]:
    """The ConfigMap holding the attempt's spec.json (mounted at /etc/charter/run)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(launch, options),
        "data": {"spec.json": launch.spec_json},
    }


def run_resources(spec_json: str) -> trainer_pb2.Resources:
    return json_format.Parse(spec_json, trainer_pb2.RunSpec()).resources


def _last_error(text: str) -> str | None:
    """The message of the last `error` event in a worker's output."""
    for line in reversed(text.splitlines()):
        event = events.parse(line)
        if event is not None and event["type"] == "error":
            return str(event.get("message", ""))
    return None


def _error(err: Exception, action: str) -> CharterError:
    """A Kubernetes API failure as Charter's error, by who can act: the operator (RBAC, namespace,
    template), or nobody but time (the API server is unreachable or overloaded)."""
    if isinstance(err, ApiException):
        status = err.status or 0
        text = f"Kubernetes refused to {action}: {status} {err.reason}"
        if status in (401, 403):
            return FailedPrecondition(
                f"{text}; grant the trainer's service account the Role documented in "
                "charter.trainer.kubernetes"
            )
        if status == 429 or status >= 500:
            return Unavailable(text)
        return FailedPrecondition(f"{text}: {(err.body or '')[:300]}")
    return Unavailable(f"could not reach Kubernetes to {action}: {err}")


def _default_api_client() -> k8s.ApiClient:
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


def _worker_status(pod: k8s.V1Pod | None) -> k8s.V1ContainerStatus | None:
    if pod is None or pod.status is None:
        return None
    return next((s for s in pod.status.container_statuses or [] if s.name == CONTAINER), None)


def _phase(pod: k8s.V1Pod) -> str | None:
    return pod.status.phase if pod.status else None


def _started(pod: k8s.V1Pod) -> bool:
    status = _worker_status(pod)
    state = status.state if status else None
    return bool(state and (state.running or state.terminated)) or _phase(pod) in ("Succeeded", "Failed")


def _terminated(pod: k8s.V1Pod) -> bool:
    status = _worker_status(pod)
    terminated = bool(status and status.state and status.state.terminated)
    return terminated or _phase(pod) in ("Succeeded", "Failed")


def _cannot_start(pod: k8s.V1Pod | None) -> str | None:
    status = _worker_status(pod)
    waiting = status.state.waiting if status and status.state else None
    if pod is None or waiting is None or waiting.reason not in _CANNOT_START:
        return None
    return _joined(f"worker pod {pod.metadata.name} cannot start", waiting.reason, waiting.message)


def _joined(*parts: str | None) -> str:
    return ": ".join(part for part in parts if part)


def _created(pod: k8s.V1Pod) -> tuple[float, str]:
    stamp = pod.metadata.creation_timestamp
    return (stamp.timestamp() if stamp else 0.0), pod.metadata.name


def _finished(job: k8s.V1Job) -> dict[str, k8s.V1JobCondition]:
    """The Job's terminal conditions that hold (Complete or Failed; not the interim FailureTarget)."""
    conditions = job.status.conditions if job.status else None
    return {c.type: c for c in conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"}


class _Cursor:
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


class KubernetesExecutor:
    """The `Executor` that runs each attempt as a Kubernetes Job (see the module docstring)."""

    name = "kubernetes"

    def __init__(
        self,
        options: JobOptions,
        api_client: k8s.ApiClient | None = None,
        *,
        poll_seconds: float = 2.0,
        request_timeout: float = 30.0,
        log_idle_seconds: float = 300.0,
        patience_seconds: float = 300.0,
    ) -> None:
        self.options = options
        api = _default_api_client() if api_client is None else api_client
        self.batch = k8s.BatchV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.poll_seconds = poll_seconds
        self.request_timeout = request_timeout
        self.log_idle_seconds = log_idle_seconds
        """A followed log this long silent is reopened (a dead connection would hang it forever)."""
        self.patience_seconds = patience_seconds
        """How long `lines` rides out an unreachable API server before it raises `Unavailable`."""

    def run_dir(self, run_id: str) -> str:
        return run_dir(self.options, run_id)

    @staticmethod
    def _parse(handle: str) -> tuple[str, str]:
        namespace, _, name = handle.partition("/")
        if not (_DNS_LABEL.fullmatch(namespace) and _DNS_LABEL.fullmatch(name)):
            raise ValueError(f"{handle=} is not <namespace>/<job-name>")
        return namespace, name

    async def _call(
        self, what: str, method: Any, *args: Any, allow: tuple[int, ...] = (), **kwargs: Any
    ) -> Any:
        """One API call in a thread; None for an ApiException whose status is in `allow`, else
        Charter's error."""
        try:
            return await asyncio.to_thread(method, *args, _request_timeout=self.request_timeout, **kwargs)
        except ApiException as err:
            if err.status in allow:
                return None
            raise _error(err, what) from err
        except _TRANSIENT as err:
            raise _error(err, what) from err

    async def launch(self, launch: Launch) -> str:
        job = job_manifest(launch, self.options, run_resources(launch.spec_json))
        configmap = spec_configmap(launch, self.options)
        namespace, name = self.options.namespace, job["metadata"]["name"]
        handle = f"{namespace}/{name}"
        core, batch = self.core, self.batch
        created = await self._call(
            f"create ConfigMap {handle}",
            core.create_namespaced_config_map,
            namespace,
            configmap,
            allow=(409,),
        )
        if created is None:  # this attempt's, left by an earlier try
            await self._patch_configmap(namespace, name, {"data": configmap["data"]})
        try:
            created = await self._call(
                f"create Job {handle}", batch.create_namespaced_job, namespace, job, allow=(409,)
            )
        except CharterError:
            await self._call(
                f"delete ConfigMap {handle}", core.delete_namespaced_config_map, name, namespace, allow=(404,)
            )
            raise
        existing = created is None
        if existing:  # this attempt was launched before (the service restarted half-way): idempotent
            created = await self._call(f"read Job {handle}", batch.read_namespaced_job, name, namespace)
            annotations = created.metadata.annotations or {}
            if annotations.get("charter.dev/run-id") != launch.run_id:
                raise FailedPrecondition(
                    f"Job {handle} exists but belongs to run "
                    f"{annotations.get('charter.dev/run-id')!r}, not {launch.run_id!r}"
                )
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid}
        await self._patch_configmap(namespace, name, {"metadata": {"ownerReferences": [owner]}})
        log.info(
            "trainer.worker.started",
            run_id=launch.run_id,
            attempt=launch.attempt,
            job=handle,
            existing=existing,
        )
        return handle

    async def _patch_configmap(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        await self._call(
            f"patch ConfigMap {namespace}/{name}",
            self.core.patch_namespaced_config_map,
            name,
            namespace,
            body,
            _content_type="application/merge-patch+json",
        )

    async def _read_job(self, namespace: str, name: str) -> k8s.V1Job | None:
        return await self._call(
            f"read Job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace, allow=(404,)
        )

    async def _pod(self, namespace: str, name: str) -> k8s.V1Pod | None:
        """The Job's newest pod (with backoffLimit 0 there is one, barring an eviction)."""
        pods = await self._call(
            f"list the pods of Job {namespace}/{name}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"job-name={name}",
        )
        return max(pods.items or [], key=_created, default=None)

    async def _patiently(self, call: Any, *args: Any) -> Any:
        """`call(*args)`, retried while the API server is unreachable, up to `patience_seconds`."""
        deadline = time.monotonic() + self.patience_seconds
        while True:
            try:
                return await call(*args)
            except Unavailable as err:
                if time.monotonic() > deadline:
                    raise
                log.warning("trainer.kubernetes.unavailable", error=str(err))
                await asyncio.sleep(self.poll_seconds)

    async def _started_pod(self, namespace: str, name: str) -> k8s.V1Pod | None:
        """Waits until the worker container has started; None if the Job ends, goes, or its pod
        cannot start before that."""
        while True:
            pod = await self._patiently(self._pod, namespace, name)
            if pod is not None and _started(pod):
                return pod
            if _cannot_start(pod):
                return None
            job = await self._patiently(self._read_job, namespace, name)
            if job is None or _finished(job):
                return None
            await asyncio.sleep(self.poll_seconds)

    def _open_log(self, namespace: str, pod: str, since_seconds: int | None) -> Any:
        return self.core.read_namespaced_pod_log(
            pod,
            namespace,
            container=CONTAINER,
            follow=True,
            timestamps=True,
            since_seconds=since_seconds,
            _preload_content=False,
            _request_timeout=(self.request_timeout, self.log_idle_seconds),
        )

    async def lines(self, handle: str) -> AsyncIterator[str]:  # type: ignore[override]
        """The worker's log, followed with timestamps: a stream that breaks or idles is reopened
        from where it stopped. Ends once the worker container has terminated and its log is read."""
        namespace, name = self._parse(handle)
        pod = await self._started_pod(namespace, name)
        if pod is None:
            return
        pod_name, cursor = pod.metadata.name, _Cursor()
        while True:
            current = await self._patiently(self._pod, namespace, name)
            if current is None or current.metadata.name != pod_name:
                return  # deleted (cancel, TTL): its log went with it
            exited = _terminated(current)  # then the stream ends once it has sent the whole log
            since = cursor.reopen(margin=30.0)
            try:
                response = await asyncio.to_thread(self._open_log, namespace, pod_name, since)
            except ApiException as err:
                if err.status == 404:
                    return
                if err.status not in (400, 429) and (err.status or 0) < 500:  # 400: not started yet
                    raise _error(err, f"read the log of pod {namespace}/{pod_name}") from err
                await asyncio.sleep(self.poll_seconds)
                continue
            except _TRANSIENT as err:
                log.warning("trainer.kubernetes.unavailable", job=handle, error=str(err))
                await asyncio.sleep(self.poll_seconds)
                continue
            ended, yielded, pending = False, 0, b""
            try:
                chunks = _chunks(response)
                while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                    *complete, pending = (pending + chunk).split(b"\n")
                    for raw in complete:
                        if (line := _fresh(cursor, raw)) is not None:
                            yielded += 1
                            yield line
                ended = True
                if pending and exited and (line := _fresh(cursor, pending)) is not None:
                    yield line  # the last line had no newline
            except _TRANSIENT as err:  # broken, or silent for log_idle_seconds: reopen where it stopped
                log.info("trainer.worker.log_reopened", job=handle, reason=type(err).__name__)
            finally:
                _close(response, ended)
            if ended and exited:
                return
            if ended and not yielded:
                await asyncio.sleep(self.poll_seconds)

    async def outcome(self, handle: str) -> Outcome | None:
        """None while the Job runs. A worker pod that cannot start (a bad image, a missing Secret)
        fails the attempt at once, and its Job is deleted so that it holds no node's GPUs."""
        namespace, name = self._parse(handle)
        job = await self._read_job(namespace, name)
        if job is None:
            return Outcome(False, f"Job {handle} no longer exists (cancelled, or deleted after it finished)")
        finished = _finished(job)
        if "Complete" in finished:
            return Outcome(True, "")
        pod = await self._pod(namespace, name)
        if "Failed" in finished:
            return Outcome(False, await self._failure(namespace, pod, finished["Failed"]))
        if (reason := _cannot_start(pod)) is None:
            return None
        await self.cancel(handle)
        return Outcome(False, reason)

    async def _failure(self, namespace: str, pod: k8s.V1Pod | None, condition: k8s.V1JobCondition) -> str:
        """Why: the worker's last `error` event, else how its container ended, else the Job's
        condition."""
        status = _worker_status(pod)
        terminated = status.state.terminated if status and status.state else None
        log_tail = ""
        if pod is not None:
            try:
                log_tail = await self._call(
                    f"read the log of pod {namespace}/{pod.metadata.name}",
                    self.core.read_namespaced_pod_log,
                    pod.metadata.name,
                    namespace,
                    container=CONTAINER,
                    tail_lines=500,
                )
            except CharterError as err:  # the termination message still carries the log's tail
                log.warning("trainer.worker.log_unreadable", pod=pod.metadata.name, error=str(err))
        for text in (log_tail, terminated.message if terminated else None):
            if text and (message := _last_error(text)):
                return message
        if terminated is None or condition.reason == "DeadlineExceeded":
            return _joined("Job failed", condition.reason, condition.message)
        code = terminated.exit_code
        if terminated.reason == "OOMKilled":
            return f"worker container was OOMKilled (exit code {code}): raise spec.resources.memory"
        return exit_reason(-(code - 128) if code > 128 else code, None)

    async def cancel(self, handle: str) -> None:
        namespace, name = self._parse(handle)
        await self._call(
            f"delete Job {handle}",
            self.batch.delete_namespaced_job,
            name,
            namespace,
            propagation_policy="Background",
            allow=(404,),
        )
        # the Job owns it, unless a launch stopped half-way
        await self._call(
            f"delete ConfigMap {handle}",
            self.core.delete_namespaced_config_map,
            name,
            namespace,
            allow=(404,),
        )
        log.info("trainer.worker.cancelled", job=handle)


def _fresh(cursor: _Cursor, raw: bytes) -> str | None:
    """A timestamped log line's text, or None if it was yielded before."""
    stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
    return text.removesuffix("\r") if cursor.fresh(stamp) else None


def _chunks(response: Any) -> Iterator[bytes]:
    """A streamed body as it arrives (the API server sends a followed log chunked)."""
    if response.chunked and response.supports_chunked_reads():
        yield from response.read_chunked(decode_content=True)
    else:
        while chunk := response.read1(65536):
            yield chunk


def _close(response: Any, ended: bool) -> None:
    """Returns a finished stream's connection to the pool; shuts an unfinished one down, which also
    wakes a thread still blocked reading it."""
    if ended:
        response.release_conn()
        return
    with contextlib.suppress(Exception):
        response.shutdown()
    response.close()

"""`KubernetesExecutor`: the `Executor` that runs each attempt of a run as a Kubernetes Job (see
`charter.trainer.kubernetes`): launch (ConfigMap, then Job, then — on several nodes — the rendezvous
Service, idempotently), the worker's log followed (rank 0's pod: the one that reports) and reopened
where it broke, the outcome from the Job's status (succeeded when every node's pod did; failed, with
the first failed pod's reason, when any failed), and cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from charter.core.errors import CharterError, FailedPrecondition, Unavailable
from charter.trainer.executor import Launch, Outcome, exit_reason
from charter.trainer.kubernetes import status as podstate
from charter.trainer.kubernetes.manifest import (
    CONTAINER,
    DNS_LABEL,
    JobOptions,
    job_manifest,
    rendezvous_service,
    run_dir,
    run_resources,
    spec_configmap,
)

log = structlog.get_logger("charter.trainer")

_TRANSIENT = (urllib3.exceptions.HTTPError, OSError)


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
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return k8s.ApiClient(configuration)


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
        if not (DNS_LABEL.fullmatch(namespace) and DNS_LABEL.fullmatch(name)):
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
        resources = run_resources(launch.spec_json)
        job = job_manifest(launch, self.options, resources)
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
        if resources.node_count > 1:  # owned by the Job from its creation: deleted with it
            service = rendezvous_service(launch, self.options, created.metadata.uid)
            try:
                await self._call(
                    f"create Service {handle}",
                    core.create_namespaced_service,
                    namespace,
                    service,
                    allow=(409,),
                )
            except CharterError:  # the ranks could never meet: no Job holding nodes' GPUs for nothing
                await self.cancel(handle)
                raise
        log.info(
            "trainer.worker.started",
            run_id=launch.run_id,
            attempt=launch.attempt,
            job=handle,
            existing=existing,
            nodes=resources.node_count,
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
        job: k8s.V1Job | None = await self._call(
            f"read Job {namespace}/{name}", self.batch.read_namespaced_job, name, namespace, allow=(404,)
        )
        return job

    async def _pods(self, namespace: str, name: str) -> list[k8s.V1Pod]:
        pods = await self._call(
            f"list the pods of Job {namespace}/{name}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"job-name={name}",
        )
        return list(pods.items or [])

    async def _pod(self, namespace: str, name: str) -> k8s.V1Pod | None:
        """The Job's newest pod of rank 0 — the one that reports (with backoffLimit 0 there is one per
        node, barring an eviction)."""
        pods = [p for p in await self._pods(namespace, name) if podstate.completion_index(p) in (None, 0)]
        return max(pods, key=podstate.created, default=None)

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
            pod: k8s.V1Pod | None = await self._patiently(self._pod, namespace, name)
            if pod is not None and podstate.started(pod):
                return pod
            if podstate.cannot_start(pod):
                return None
            job = await self._patiently(self._read_job, namespace, name)
            if job is None or podstate.finished(job):
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

    async def lines(self, handle: str) -> AsyncIterator[str]:
        """The worker's log, followed with timestamps: a stream that breaks or idles is reopened
        from where it stopped. Ends once the worker container has terminated and its log is read."""
        namespace, name = self._parse(handle)
        pod = await self._started_pod(namespace, name)
        if pod is None:
            return
        pod_name, cursor = podstate.name_of(pod), podstate.LogCursor()
        while True:
            current = await self._patiently(self._pod, namespace, name)
            if current is None or podstate.name_of(current) != pod_name:
                return  # deleted (cancel, TTL): its log went with it
            exited = podstate.terminated(current)  # then the stream ends once it has sent the whole log
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
                        if (line := podstate.fresh_line(cursor, raw)) is not None:
                            yielded += 1
                            yield line
                ended = True
                if pending and exited and (line := podstate.fresh_line(cursor, pending)) is not None:
                    yield line  # the last line had no newline
            except _TRANSIENT as err:  # broken, or silent for log_idle_seconds: reopen where it stopped
                log.info("trainer.worker.log_reopened", job=handle, reason=type(err).__name__)
            finally:
                _close(response, ended)
            if ended and exited:
                return
            if ended and not yielded:
                await asyncio.sleep(self.poll_seconds)

    async def outcome(self, handle: str, nonce: str = "") -> Outcome | None:
        """None while the Job runs. A worker pod that cannot start (a bad image, a missing Secret)
        fails the attempt at once, and its Job is deleted so that it holds no node's GPUs."""
        namespace, name = self._parse(handle)
        job = await self._read_job(namespace, name)
        if job is None:
            return Outcome(False, f"Job {handle} no longer exists (cancelled, or deleted after it finished)")
        finished, nodes = podstate.finished(job), podstate.completions(job)
        if "Complete" in finished and podstate.all_succeeded(job):
            return Outcome(True, "")
        if "Complete" in finished:
            succeeded = (job.status.succeeded if job.status else None) or 0
            return Outcome(False, f"Job {handle} completed with {succeeded} of its {nodes} nodes succeeded")
        pods = await self._pods(namespace, name)
        if "Failed" in finished:
            return Outcome(False, await self._failure(namespace, pods, finished["Failed"], nonce, nodes))
        reason = next(filter(None, map(podstate.cannot_start, pods)), None)  # any node's pod
        if reason is None:
            return None
        await self.cancel(handle)
        return Outcome(False, reason)

    async def _failure(
        self,
        namespace: str,
        pods: list[k8s.V1Pod],
        condition: k8s.V1JobCondition,
        nonce: str,
        nodes: int = 1,
    ) -> str:
        """Why, from the first pod to fail (the Job stops the other nodes' pods after it; rank 0's
        pod when none did): the worker's last `error` event, else how its container ended, else the
        Job's condition. On several nodes the reason names the node."""
        broken = sorted((p for p in pods if podstate.failed(p)), key=podstate.ended_at)
        first = [p for p in pods if podstate.completion_index(p) in (None, 0)]
        ordered = broken or sorted(first, key=podstate.created, reverse=True)
        pod = ordered[0] if ordered else None
        reason = await self._pod_failure(namespace, pod, condition, nonce)
        index = podstate.completion_index(pod) if pod is not None else None
        return f"node {index} of {nodes}: {reason}" if nodes > 1 and index is not None else reason

    async def _pod_failure(
        self, namespace: str, pod: k8s.V1Pod | None, condition: k8s.V1JobCondition, nonce: str
    ) -> str:
        status = podstate.worker_status(pod)
        terminated = status.state.terminated if status and status.state else None
        log_tail = ""
        if pod is not None:
            try:
                log_tail = await self._call(
                    f"read the log of pod {namespace}/{podstate.name_of(pod)}",
                    self.core.read_namespaced_pod_log,
                    podstate.name_of(pod),
                    namespace,
                    container=CONTAINER,
                    tail_lines=500,
                )
            except CharterError as err:  # the termination message still carries the log's tail
                log.warning("trainer.worker.log_unreadable", pod=podstate.name_of(pod), error=str(err))
        for text in (log_tail, terminated.message if terminated else None):
            if text and (message := podstate.last_error(text, nonce)):
                return message
        if terminated is None or condition.reason == "DeadlineExceeded":
            return podstate.joined("Job failed", condition.reason, condition.message)
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

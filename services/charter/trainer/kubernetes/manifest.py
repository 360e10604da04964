"""A run attempt's Kubernetes objects: the Job rendered from `job-template.yaml` (or the operator's
own template) and checked for what the executor relies on — an indexed Job, one pod per node, for a
run on several nodes (`launcher`) — the ConfigMap holding its spec (and its accelerate config), and
the names they get (DNS-1123 labels of at most 63 characters; an indexed Job's pods are named
`<job>-<index>`, so the Job's name leaves room for the index). `JobOptions` is the trainer's
`trainer.kubernetes` settings section, checked for what a Job needs.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml

from charter.core.errors import InvalidArgument
from charter.core.settings import TrainerKubernetesSettings
from charter.trainer import events
from charter.trainer.executor import Launch, worker_command
from charter.trainer.kubernetes import launcher
from charter.trainer.runs import Resources

TEMPLATE = Path(__file__).parent.parent / "job-template.yaml"
APP = "charter-trainer-worker"
CONTAINER = "worker"
SPEC_DIR = "/etc/charter/run"
HOME = "/home/charter"
UID = 10001
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PREFIX = "charter-run-"
_SLUG_MAX = 63 - len(_PREFIX) - len("-99999") - len("-999")  # room for a pod's "-<index>" (nodes <= 1000)
_QUANTITY = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")
_RESERVED_MOUNTS = ("", SPEC_DIR, HOME, "/tmp", "/dev/shm")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class JobOptions(TrainerKubernetesSettings, frozen=True):  # type: ignore[misc]  # pydantic allows this
    """Where and how worker Jobs run: the `trainer.kubernetes` settings (same fields, same defaults),
    frozen, and checked on construction (a ValueError names the field): a DNS-1123 namespace, an image
    pinned to a version tag other than `latest` or to a digest, a runs PVC, a runs mount of its own,
    and Kubernetes quantities."""

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._check()

    @classmethod
    def from_settings(cls, settings: TrainerKubernetesSettings) -> JobOptions:
        return cls(**settings.model_dump())

    def _check(self) -> None:
        if not DNS_LABEL.fullmatch(self.namespace):
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


def _container_resources(resources: Resources) -> dict[str, dict[str, str]]:
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


def _command(launch: Launch, options: JobOptions, resources: Resources) -> list[str]:
    worker = worker_command("python", f"{SPEC_DIR}/spec.json", run_dir(options, launch.run_id), launch.resume)
    return launcher.command(worker, object_name(launch.run_id, launch.attempt), SPEC_DIR, resources)


def _template(path: Path) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(path.read_text(encoding="utf-8"))


def job_manifest(launch: Launch, options: JobOptions, resources: Resources) -> dict[str, Any]:
    """The Job for one attempt, rendered from the template and checked for what the executor
    relies on; the worker container gets the attempt's event nonce here (an operator's own template
    need not know of it)."""
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
        tls_secret=options.tls_secret,
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
    job: dict[str, Any] = yaml.safe_load(text)
    _check_job(job, meta, path)
    if (nodes := resources.node_count) > 1:  # here, not in the template: an operator's own gets it too
        job["spec"].update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        job["spec"]["template"]["spec"]["subdomain"] = meta["name"]  # the rendezvous Service
    if launch.nonce:
        worker = next(c for c in job["spec"]["template"]["spec"]["containers"] if c.get("name") == CONTAINER)
        env = [e for e in worker.get("env") or [] if e.get("name") != events.NONCE_ENV]
        worker["env"] = [*env, {"name": events.NONCE_ENV, "value": launch.nonce}]
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
    """The ConfigMap holding the attempt's spec.json and, for a worker under accelerate, its
    accelerate config (both mounted at /etc/charter/run)."""
    data = {"spec.json": launch.spec_json}
    if (config := launcher.accelerate_config(run_resources(launch.spec_json))) is not None:
        data[launcher.CONFIG_KEY] = config
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(launch, options), "data": data}


def rendezvous_service(launch: Launch, options: JobOptions, job_uid: str) -> dict[str, Any]:
    """The headless Service of a run on several nodes (`launcher.rendezvous_service`), owned by its Job."""
    return launcher.rendezvous_service(_metadata(launch, options), job_uid)


def run_resources(spec_json: str) -> Resources:
    """The `resources` of a spec in the worker's JSON form (the RunSpec message as JSON)."""
    found = json.loads(spec_json).get("resources") or {}
    strategy = str(found.get("strategy", ""))  # the enum's name in JSON (STRATEGY_FSDP), or its number
    return Resources(
        gpus=int(found.get("gpus", 0)),
        processes=int(found.get("processes", 0)),
        cpu=str(found.get("cpu", "")),
        memory=str(found.get("memory", "")),
        nodes=int(found.get("nodes", 0)),
        strategy="" if strategy == "STRATEGY_UNSPECIFIED" else strategy.removeprefix("STRATEGY_").lower(),
    )

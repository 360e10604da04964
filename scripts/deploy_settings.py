"""Charter-specific checks of a render of `deploy/`: the settings file and the manifests agree.

For every `charter serve <service> --config FILE` container, the settings it will load — FILE
from its ConfigMap plus the container's `CHARTER_*` variables — are validated with Charter's own
settings model (unknown keys are errors), and then compared with the pod around them:

- `server.port`, `server.metrics_port`, `review.web_port` are the container's grpc/metrics/http
  ports, and the gRPC probes ask `server.port` (`server.health_port` when set, which `server.tls`
  needs: kubelet's probes speak no TLS; and `server.max_concurrent_rpcs`: a full main port refuses them);
- `server.tls` and `client.tls` files lie in a mounted Secret that holds those keys;
- `constitutions.directory` is a whole-folder mount of the constitutions ConfigMap (critic, judge);
- `review.tokens_file` / `trainer.tokens_file` lie in a mounted Secret that holds that key;
- `inference.cache_dir`, HOME and TMPDIR lie on writable volumes (the root filesystem is read-only);
- the openai engine's `base_url` names a Service port of the render, its tokenizer folder is mounted,
  and a `vllm serve` Deployment serves `served_model_name` with --tensor-parallel-size equal to its
  GPUs and a context at least `inference.max_model_len`;
- the trainer's Kubernetes executor: its namespace, image (the trainer's own), workers' account,
  runs PVC (mounted at `runs_mount` in the service too) and workers' Secret exist;
- `terminationGracePeriodSeconds` covers the preStop sleep plus `server.drain_seconds`.

It also renders one worker Job from the trainer's packaged template with those settings
(`sample_worker_job`), so the generic checks see the pods the trainer creates at run time.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import yaml
from charter.core.settings import CharterSettings
from deploy_objects import Obj, PodTemplate, Render
from pydantic import ValidationError

# what a secret-sourced variable stands for while validating (the real value is the operator's)
_PLACEHOLDERS = {"database_url": "postgresql://user:password@database:5432/charter"}


@contextlib.contextmanager
def _no_charter_environment() -> Iterator[None]:
    """CharterSettings reads os.environ; the checker's own CHARTER_* variables must not leak in."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CHARTER_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _charter_containers(r: Render) -> Iterator[tuple[PodTemplate, Obj, str, str]]:
    """(pod, container, service, config path) for every `charter serve` container."""
    for pod in r.pods:
        for c in pod.containers(init=False):
            argv = [*(c.get("command") or []), *(c.get("args") or [])]
            if argv[:2] == ["charter", "serve"] and "--config" in argv:
                yield pod, c, argv[2], argv[argv.index("--config") + 1]


def _mount_for(c: Obj, path: str) -> Obj | None:
    """The volumeMount holding `path` (the longest mountPath that contains it)."""
    best = None
    for m in c.get("volumeMounts") or []:
        root = m["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (
            best is None or len(root) > len(best["mountPath"])
        ):
            best = m
    return best


def _volume(pod: PodTemplate, name: str) -> Obj:
    return next((v for v in pod.spec.get("volumes") or [] if v["name"] == name), {})


def _settings_file(
    r: Render, pod: PodTemplate, c: Obj, path: str
) -> tuple[dict[str, Any] | None, str | None]:
    mount = _mount_for(c, path)
    if mount is None:
        return None, f"--config {path} is on no mounted volume"
    name = (_volume(pod, mount["name"]).get("configMap") or {}).get("name")
    if name is None:
        return None, f"--config {path} is not on a ConfigMap volume"
    key = posixpath.relpath(path, mount["mountPath"])
    text = (r.named("ConfigMap").get(name, {}).get("data") or {}).get(key)
    if text is None:
        return None, f"--config {path}: ConfigMap {name!r} has no key {key!r}"
    return yaml.safe_load(text) or {}, None


def _with_environment(data: dict[str, Any], c: Obj, namespace: str) -> tuple[dict[str, Any], list[str]]:
    """The settings file with the container's CHARTER_* variables folded in (values from Secrets are
    placeholders, a fieldRef to the namespace is the render's)."""
    merged, problems = yaml.safe_load(yaml.safe_dump(data)) or {}, []
    for e in c.get("env") or []:
        name = e.get("name", "")
        if not name.startswith("CHARTER_"):
            continue
        path = [p.lower() for p in name[len("CHARTER_") :].split("__")]
        source = e.get("valueFrom") or {}
        if "value" in e:
            value: Any = e["value"]
        elif (source.get("fieldRef") or {}).get("fieldPath") == "metadata.namespace":
            value = namespace
        else:
            value = _PLACEHOLDERS.get(path[-1], "secret-from-kubernetes")
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"env {name}: {part} is not a section")
                break
        else:
            node[path[-1]] = value
    return merged, problems


def _port(c: Obj, name: str) -> int | None:
    return next((p.get("containerPort") for p in c.get("ports") or [] if p.get("name") == name), None)


def _writable(pod: PodTemplate, c: Obj, path: str) -> bool:
    mount = _mount_for(c, path)
    if mount is None or mount.get("readOnly"):
        return False
    volume = _volume(pod, mount["name"])
    return "emptyDir" in volume or "persistentVolumeClaim" in volume or "ephemeral" in volume


def _secret_file(r: Render, pod: PodTemplate, c: Obj, path: str, provided_keys: dict) -> str | None:
    mount = _mount_for(c, path)
    if mount is None:
        return f"{path} is on no mounted volume"
    secret = _volume(pod, mount["name"]).get("secret")
    if secret is None:
        return f"{path} is not on a Secret volume"
    name, rel = secret.get("secretName"), posixpath.relpath(path, mount["mountPath"])
    items = secret.get("items")
    if items is not None:
        return (
            None if rel in {i.get("path") for i in items} else f"Secret volume {name} does not project {rel}"
        )
    keys = r.data_keys("Secret", name)
    keys = keys if keys is not None else set(provided_keys.get(name, ()))
    return None if rel in keys else f"Secret {name!r} has no key {rel!r}"


def check(r: Render, provided_secrets: dict[str, frozenset[str]]) -> tuple[list[str], list[Obj]]:
    """Findings, and the objects the trainer would create at run time (for the generic checks)."""
    problems: list[str] = []
    workers: list[Obj] = []
    for pod, c, service, path in _charter_containers(r):
        where = f"{pod.ref} container {c.get('name')}"
        data, err = _settings_file(r, pod, c, path)
        if data is None:
            problems.append(f"{where}: {err}")
            continue
        namespace = pod.owner["metadata"].get("namespace", "default")
        merged, env_problems = _with_environment(data, c, namespace)
        problems += [f"{where}: {p}" for p in env_problems]
        try:
            with _no_charter_environment():
                settings = CharterSettings(**merged)
        except ValidationError as err:
            e = err.errors(include_url=False)[0]
            field = ".".join(str(p) for p in e["loc"])
            problems.append(f"{where}: settings {path} + CHARTER_* env: {field}: {e['msg']}")
            continue
        problems += [f"{where}: {p}" for p in _check_service(r, pod, c, service, settings, provided_secrets)]
        if service == "trainer" and settings.trainer.executor == "kubernetes":
            found, objects = _check_trainer(r, pod, c, settings)
            problems += [f"{where}: {p}" for p in found]
            workers += objects
    return problems, workers


def _check_service(
    r: Render, pod: PodTemplate, c: Obj, service: str, s: CharterSettings, provided: dict
) -> list[str]:
    problems = []
    for setting, port_name, value in [
        ("server.port", "grpc", s.server.port),
        ("server.metrics_port", "metrics", s.server.metrics_port),
        *([("review.web_port", "http", s.review.web_port)] if service == "review" else []),
    ]:
        if value is not None and _port(c, port_name) != value:
            problems.append(
                f"{setting}={value} but the container's {port_name!r} port is {_port(c, port_name)}"
            )
    # with server.tls the probes ask the plaintext health-only port (kubelet's probes speak no TLS)
    probed, probe_setting = (
        (s.server.health_port, "server.health_port")
        if s.server.health_port is not None
        else (s.server.port, "server.port")
    )
    if s.server.tls is not None and s.server.health_port is None:
        problems.append("server.tls is set but server.health_port is not: kubelet's gRPC probes speak no TLS")
    elif s.server.max_concurrent_rpcs is not None and s.server.health_port is None:
        problems.append(
            f"server.max_concurrent_rpcs={s.server.max_concurrent_rpcs} but server.health_port is not set: "
            "under full load the probes on the main port are refused and kubelet restarts a busy pod"
        )
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = (c.get(kind) or {}).get("grpc")
        if grpc is not None and grpc.get("port") != probed:
            problems.append(f"{kind} asks port {grpc.get('port')}, but {probe_setting}={probed}")
    sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
    if grace < sleep + s.server.drain_seconds:
        problems.append(
            f"terminationGracePeriodSeconds={grace} is shorter than the preStop sleep ({sleep} s) + "
            f"server.drain_seconds ({s.server.drain_seconds} s): in-flight calls would be killed"
        )
    env = {e["name"]: e.get("value") for e in c.get("env") or []}
    for var in ("HOME", "TMPDIR"):
        if env.get(var) and not _writable(pod, c, env[var]):
            problems.append(
                f"{var}={env[var]} is not on a writable volume (the root filesystem is read-only)"
            )
    if service in ("critic-reviser", "judge"):
        directory = str(s.constitutions.directory)
        mount = next(
            (m for m in c.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == directory), None
        )
        if mount is None or "configMap" not in _volume(pod, mount["name"]):
            problems.append(f"constitutions.directory={directory} is not a ConfigMap folder mount")
    for setting, value in (
        ("review.tokens_file", s.review.tokens_file),
        ("trainer.tokens_file", s.trainer.tokens_file),
    ):
        if value is not None and setting.split(".")[0] == service:
            err = _secret_file(r, pod, c, str(value), provided)
            if err:
                problems.append(f"{setting}: {err}")
    server_tls, client_tls = s.server.tls, s.client.tls
    for setting, file in (  # certificates and keys come from a mounted Secret (cert-manager's)
        ("server.tls.cert_file", server_tls and server_tls.cert_file),
        ("server.tls.key_file", server_tls and server_tls.key_file),
        ("server.tls.client_ca_file", server_tls and server_tls.client_ca_file),
        ("client.tls.ca_file", client_tls and client_tls.ca_file),
        ("client.tls.cert_file", client_tls and client_tls.cert_file),
        ("client.tls.key_file", client_tls and client_tls.key_file),
    ):
        if file:
            err = _secret_file(r, pod, c, str(file), provided)
            if err:
                problems.append(f"{setting}: {err}")
    if service in ("generator", "critic-reviser", "judge"):
        problems += _check_inference(r, pod, c, s)
    return problems


def _check_inference(r: Render, pod: PodTemplate, c: Obj, s: CharterSettings) -> list[str]:
    inference = s.inference
    if inference.engine != "openai":
        cache = str(inference.cache_dir) if inference.cache_dir else None
        if cache is None or not _writable(pod, c, cache):
            return [f"inference.cache_dir={cache} is not on a writable volume (models are converted there)"]
        return []
    problems = []
    url = urlsplit(inference.openai.base_url)
    host, port = (url.hostname or "").split(".")[0], url.port or (443 if url.scheme == "https" else 80)
    service = r.named("Service").get(host)
    if service is None or port not in {p.get("port") for p in service["spec"].get("ports") or []}:
        problems.append(
            f"inference.openai.base_url={inference.openai.base_url}: no Service {host} with port {port}"
        )
    tokenizer = inference.tokenizer or inference.model
    if _mount_for(c, tokenizer) is None:
        problems.append(f"inference.tokenizer={tokenizer} is on no mounted volume")
    served = inference.openai.served_model_name or inference.model
    for pod_v, vc in _vllm_containers(r):
        env = {e["name"]: e.get("value") for e in vc.get("env") or []}
        argv = " ".join([*(vc.get("command") or []), *(vc.get("args") or [])])
        for name, value in env.items():
            argv = argv.replace(f"$({name})", str(value))
        args = dict(a.split("=", 1) for a in argv.split() if a.startswith("--") and "=" in a)
        gpus = ((vc.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
        where = pod_v.ref
        if args.get("--served-model-name") != served:
            problems.append(
                f"served_model_name {served!r}, but {where} serves {args.get('--served-model-name')!r}"
            )
        if str(args.get("--tensor-parallel-size", "1")) != str(gpus):
            problems.append(
                f"{where}: --tensor-parallel-size={args.get('--tensor-parallel-size')} "
                f"but nvidia.com/gpu={gpus}"
            )
        if int(args.get("--max-model-len", "0")) < inference.max_model_len:
            problems.append(
                f"inference.max_model_len={inference.max_model_len} exceeds {where}'s --max-model-len"
            )
        if tokenizer not in argv.split():
            problems.append(f"inference.tokenizer={tokenizer} is not the model {where} serves")
    return problems


def _vllm_containers(r: Render) -> Iterator[tuple[PodTemplate, Obj]]:
    for pod in r.pods:
        for c in pod.containers(init=False):
            if (c.get("command") or [])[:2] == ["vllm", "serve"]:
                yield pod, c


def _check_trainer(r: Render, pod: PodTemplate, c: Obj, s: CharterSettings) -> tuple[list[str], list[Obj]]:
    """Findings, and one attempt's Job and spec ConfigMap as the executor would create them."""
    from charter.trainer.executor import Launch
    from charter.trainer.kubernetes import JobOptions, job_manifest, run_resources, spec_configmap

    k = s.trainer.kubernetes
    problems = []
    namespace = pod.owner["metadata"].get("namespace")
    if k.namespace != namespace:
        problems.append(f"trainer.kubernetes.namespace={k.namespace} but the service runs in {namespace}")
    if k.image != c.get("image"):
        problems.append(
            f"trainer.kubernetes.image={k.image} differs from the trainer's own image {c.get('image')} "
            "(keep the replacement in your overlay after `images:`)"
        )
    mount = next((m for m in c.get("volumeMounts") or [] if m["mountPath"] == k.runs_mount), None)
    claim = (
        (_volume(pod, mount["name"]).get("persistentVolumeClaim") or {}).get("claimName") if mount else None
    )
    if claim != k.runs_pvc:
        problems.append(
            f"trainer.kubernetes.runs_pvc={k.runs_pvc} is not mounted at runs_mount={k.runs_mount}"
        )
    try:
        options = JobOptions(**k.model_dump())
    except ValueError as err:
        return [*problems, f"trainer.kubernetes: {err}"], []
    spec = '{"algorithm": "ALGORITHM_DPO", "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"}}'
    launch = Launch("r-0123456789abcdef", 1, spec, False)
    return problems, [job_manifest(launch, options, run_resources(spec)), spec_configmap(launch, options)]

"""deploy/ passes scripts/check_deploy.py, and each check the script makes catches the break it is
there for: every case below breaks one thing in a good render and expects the finding that names it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support import ROOT, subprocess_env

Obj = dict[str, Any]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The object of that kind whose name is `name` (or starts with it: generated names end in a hash)."""
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def pod(objects: list[Obj], name: str, kind: str = "Deployment") -> Obj:
    return find(objects, kind, name)["spec"]["template"]["spec"]


def container(objects: list[Obj], name: str, kind: str = "Deployment") -> Obj:
    return pod(objects, name, kind)["containers"][0]


def env(objects: list[Obj], deployment: str, var: str) -> Obj:
    return next(e for e in container(objects, deployment)["env"] if e["name"] == var)


def edit_settings(objects: list[Obj], change: Callable[[Obj], None]) -> None:
    configmap = find(objects, "ConfigMap", "charter-settings")
    settings = yaml.safe_load(configmap["data"]["settings.yaml"])
    change(settings)
    configmap["data"]["settings.yaml"] = yaml.safe_dump(settings)


def findings(checker: ModuleType, objects: list[Obj], overlay: str, provided: Any = None) -> list[str]:
    """Settings and consistency findings (the schema step is tested on its own: it is the slow one)."""
    from deploy_objects import Render

    if provided is None:
        provided = checker.Provided.load(checker.DEPLOY / overlay / "operator-provided.yaml")
    problems, workers = checker.check_settings(Render(objects), dict(provided.secrets))
    return problems + checker.check([*objects, *workers], provided)


def _set(path: list[Any], value: Any) -> Callable[[Obj], None]:
    def change(settings: Obj) -> None:
        node = settings
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return change


# (id, overlay, break, a phrase the finding must contain)
BREAKS: list[tuple[str, str, Callable[[list[Obj]], None], str]] = [
    # Services, probes
    ("service-selector", "overlays/gpu",
     lambda o: find(o, "Service", "charter-judge")["spec"].update(selector={"app.kubernetes.io/name": "charter-jduge"}),
     "Service/charter-judge: selector"),
    ("service-target-port", "overlays/gpu",
     lambda o: find(o, "Service", "charter-review")["spec"]["ports"][1].update(targetPort="web"),
     "targets 'web'"),
    ("headless-port-translated", "overlays/dev",
     lambda o: find(o, "Service", "charter-judge")["spec"]["ports"][0].update(port=443),
     "headless, so clients dial the pods on port 443"),
    ("scaled-grpc-not-headless", "overlays/gpu",
     lambda o: find(o, "Service", "charter-generator")["spec"].pop("clusterIP"),
     "Service/charter-generator: gRPC in front of Deployment/charter-generator"),
    ("probe-named-port", "overlays/gpu",
     lambda o: container(o, "charter-vllm")["readinessProbe"]["httpGet"].update(port="healthz"),
     "readinessProbe httpGet port 'healthz'"),
    ("probe-grpc-port", "overlays/dev",
     lambda o: container(o, "charter-judge")["livenessProbe"]["grpc"].update(port=50052),
     "livenessProbe grpc port 50052"),
    ("no-readiness-probe", "overlays/dev",
     lambda o: container(o, "charter-generator").pop("readinessProbe"), "no readinessProbe"),
    # references
    ("configmap-undefined", "overlays/dev",
     lambda o: next(v for v in pod(o, "charter-judge")["volumes"] if v["name"] == "constitutions")["configMap"]
     .update(name="charter-constitution"),
     "ConfigMap 'charter-constitution' is neither defined nor operator-provided"),
    ("secret-key-missing", "overlays/gpu",
     lambda o: env(o, "charter-review", "CHARTER_REVIEW__DATABASE_URL")["valueFrom"]["secretKeyRef"]
     .update(key="review-dsn"),
     "has no key 'review-dsn'"),
    ("secret-undefined", "overlays/dev",
     lambda o: o.remove(find(o, "Secret", "charter-tokens")),
     "Secret 'charter-tokens' is neither defined nor operator-provided"),
    ("pvc-undefined", "overlays/gpu",
     lambda o: next(v for v in pod(o, "charter-trainer")["volumes"] if v["name"] == "runs")["persistentVolumeClaim"]
     .update(claimName="charter-runs"),
     "PersistentVolumeClaim 'charter-runs'"),
    ("service-account-undefined", "overlays/dev",
     lambda o: pod(o, "charter-generator").update(serviceAccountName="charter-gen"),
     "ServiceAccount 'charter-gen'"),
    ("image-pull-secret-undefined", "overlays/gpu",
     lambda o: pod(o, "charter-review").update(imagePullSecrets=[{"name": "regcred"}]),
     "Secret 'regcred'"),
    ("configmap-subpath", "overlays/dev",
     lambda o: next(m for m in container(o, "charter-judge")["volumeMounts"] if m["name"] == "constitutions")
     .update(subPath="harmless.yaml"),
     "never sees updates"),
    ("rolebinding-role", "overlays/gpu",
     lambda o: find(o, "RoleBinding", "charter-trainer-jobs")["roleRef"].update(name="charter-trainer-job"),
     "Role 'charter-trainer-job' is not defined"),
    ("namespace-missing", "overlays/gpu",
     lambda o: find(o, "Service", "charter-judge")["metadata"].pop("namespace"),
     "Service/charter-judge: no metadata.namespace"),
    # images, resources
    ("image-latest", "overlays/gpu",
     lambda o: container(o, "charter-review").update(image="ghcr.io/charter-ai/charter-service:latest"),
     "is not pinned"),
    ("image-untagged", "overlays/gpu",
     lambda o: container(o, "charter-vllm").update(image="vllm/vllm-openai"), "'vllm/vllm-openai' is not pinned"),
    ("no-limits", "overlays/dev",
     lambda o: container(o, "charter-judge")["resources"].pop("limits"), "no limits for cpu, memory"),
    ("gpu-request-not-limit", "overlays/gpu",
     lambda o: container(o, "charter-vllm")["resources"]["requests"].update({"nvidia.com/gpu": "1"}),
     "differs from its limit"),
    # pod security
    ("writable-root", "overlays/dev",
     lambda o: container(o, "charter-review")["securityContext"].update(readOnlyRootFilesystem=False),
     "readOnlyRootFilesystem is not true"),
    ("root-user", "overlays/gpu",
     lambda o: container(o, "charter-vllm")["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    ("capabilities-kept", "overlays/dev",
     lambda o: container(o, "charter-postgres", "StatefulSet")["securityContext"]["capabilities"].update(drop=[]),
     "do not drop ALL"),
    ("privilege-escalation", "overlays/dev",
     lambda o: container(o, "charter-trainer")["securityContext"].update(allowPrivilegeEscalation=True),
     "allowPrivilegeEscalation is not false"),
    ("no-seccomp", "overlays/dev",
     lambda o: (pod(o, "charter-review")["securityContext"].pop("seccompProfile"),
                container(o, "charter-review")["securityContext"].pop("seccompProfile")),
     "seccompProfile is not RuntimeDefault"),
    ("service-links", "overlays/gpu",
     lambda o: pod(o, "charter-judge").pop("enableServiceLinks"), "enableServiceLinks: false"),
    ("token-without-role", "overlays/gpu",
     lambda o: pod(o, "charter-generator").update(automountServiceAccountToken=True),
     "mounts a service-account token, but 'charter-generator' is bound to no Role"),
    # HPA, PDB, NetworkPolicy, Ingress, ServiceMonitor
    ("hpa-target", "overlays/gpu",
     lambda o: find(o, "HorizontalPodAutoscaler", "charter-judge")["spec"]["scaleTargetRef"]
     .update(name="charter-jugde"),
     "Deployment/charter-jugde does not exist"),
    ("hpa-and-replicas", "overlays/gpu",
     lambda o: find(o, "Deployment", "charter-judge")["spec"].update(replicas=3), "also fixes spec.replicas"),
    ("pdb-selector", "overlays/dev",
     lambda o: find(o, "PodDisruptionBudget", "charter-review")["spec"]["selector"]["matchLabels"]
     .update({"app.kubernetes.io/name": "review"}),
     "PodDisruptionBudget/charter-review: its selector matches no workload's pods"),
    ("netpol-selector", "overlays/dev",
     lambda o: find(o, "NetworkPolicy", "charter-review-from-workers")["spec"]["podSelector"]["matchLabels"]
     .update({"app.kubernetes.io/name": "charter-reviews"}),
     "NetworkPolicy/charter-review-from-workers: podSelector"),
    ("netpol-peer", "overlays/gpu",
     lambda o: find(o, "NetworkPolicy", "charter-vllm-from-engines")["spec"]["ingress"][0]["from"][0]
     .update(podSelector={"matchLabels": {"charter.dev/engine-clients": "true"}}),
     "ingress peer podSelector"),
    ("netpol-worker-peer", "overlays/gpu",
     lambda o: find(o, "NetworkPolicy", "charter-review-from-workers")["spec"]["ingress"][0]["from"][0]
     .update(podSelector={"matchLabels": {"app.kubernetes.io/name": "charter-worker"}}),
     "ingress peer podSelector"),
    ("netpol-port", "overlays/dev",
     lambda o: find(o, "NetworkPolicy", "charter-review-web-from-ingress")["spec"]["ingress"][0]["ports"][0]
     .update(port="web"),
     "ingress port 'web' is exposed by none"),
    ("ingress-backend", "overlays/gpu",
     lambda o: find(o, "Ingress", "charter-review")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
     .update(name="charter-reviews"),
     "backend Service 'charter-reviews'"),
    ("servicemonitor-port", "overlays/gpu-full",
     lambda o: find(o, "ServiceMonitor", "charter-services")["spec"]["endpoints"][0].update(port="metric"),
     "endpoint port 'metric'"),
    # Charter's settings against the manifests
    ("settings-unknown-key", "overlays/gpu",
     lambda o: edit_settings(o, _set(["review", "tokens_fil"], "/etc/charter/tokens/x.yaml")),
     "review.tokens_fil"),
    ("settings-env-typo", "overlays/dev",
     lambda o: container(o, "charter-review")["env"].append({"name": "CHARTER_REVEIW__WEB_PORT", "value": "8080"}),
     "reveiw"),
    ("settings-grpc-port", "overlays/dev",
     lambda o: edit_settings(o, _set(["server", "port"], 50052)),
     "server.port=50052 but the container's 'grpc' port is 50051"),
    ("settings-web-port", "overlays/gpu",
     lambda o: edit_settings(o, _set(["review", "web_port"], 8081)), "review.web_port=8081"),
    ("settings-constitutions-dir", "overlays/gpu",
     lambda o: edit_settings(o, _set(["constitutions", "directory"], "/etc/charter/constitution")),
     "constitutions.directory=/etc/charter/constitution is not a ConfigMap folder mount"),
    ("settings-tokens-file", "overlays/dev",
     lambda o: edit_settings(o, _set(["review", "tokens_file"], "/etc/charter/tokens/tokens.yaml")),
     "review.tokens_file: Secret volume charter-tokens does not project tokens.yaml"),
    ("settings-tls-file", "overlays/gpu",
     lambda o: edit_settings(o, _set(["server", "tls", "key_file"], "/etc/charter/tls/server.key")),
     "server.tls.key_file: Secret volume charter-tls does not project server.key"),
    ("settings-client-tls-unmounted", "overlays/gpu",
     lambda o: edit_settings(o, _set(["client", "tls", "ca_file"], "/etc/ssl/ca.crt")),
     "client.tls.ca_file: /etc/ssl/ca.crt is on no mounted volume"),
    ("settings-tls-probe-port", "overlays/gpu",
     lambda o: container(o, "charter-judge")["readinessProbe"]["grpc"].update(port=50051),
     "readinessProbe asks port 50051, but server.health_port=8081"),
    ("settings-tls-no-health-port", "overlays/gpu",
     lambda o: edit_settings(o, lambda s: s["server"].pop("health_port")),
     "server.tls is set but server.health_port is not"),
    ("settings-cache-dir", "overlays/dev",
     lambda o: edit_settings(o, _set(["inference", "cache_dir"], "/opt/models")),
     "inference.cache_dir=/opt/models is not on a writable volume"),
    ("trainer-image", "overlays/gpu",
     lambda o: env(o, "charter-trainer", "CHARTER_TRAINER__KUBERNETES__IMAGE")
     .update(value="ghcr.io/charter-ai/charter-trainer:0.0.9"),
     "differs from the trainer's own image"),
    ("trainer-runs-pvc", "overlays/gpu",
     lambda o: edit_settings(o, _set(["trainer", "kubernetes", "runs_pvc"], "runs")),
     "runs_pvc=runs is not mounted"),
    ("trainer-worker-secret", "overlays/dev",
     lambda o: edit_settings(o, _set(["trainer", "kubernetes", "env_from_secret"], "charter-worker-env")),
     "Secret 'charter-worker-env' is neither defined"),
    ("vllm-tensor-parallel", "overlays/gpu",
     lambda o: next(e for e in container(o, "charter-vllm")["env"] if e["name"] == "TENSOR_PARALLEL_SIZE")
     .update(value="4"),
     "--tensor-parallel-size=4 but nvidia.com/gpu=2"),
    ("vllm-served-name", "overlays/gpu",
     lambda o: edit_settings(o, _set(["inference", "openai", "served_model_name"], "qwen")),
     "served_model_name 'qwen'"),
    ("vllm-context", "overlays/gpu",
     lambda o: edit_settings(o, _set(["inference", "max_model_len"], 16384)), "inference.max_model_len=16384"),
    ("openai-base-url", "overlays/gpu",
     lambda o: edit_settings(o, _set(["inference", "openai", "base_url"], "http://vllm:8000/v1")),
     "no Service vllm with port 8000"),
    ("grace-period", "overlays/gpu",
     lambda o: pod(o, "charter-review").update(terminationGracePeriodSeconds=10),
     "terminationGracePeriodSeconds=10 is shorter"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overlay", "breaks", "expected"), [b[1:] for b in BREAKS], ids=[b[0] for b in BREAKS]
)
def test_each_check_catches_its_break(
    checker: ModuleType, render_of: Callable[[str], list[Obj]], overlay: str, breaks: Callable, expected: str
) -> None:
    objects = render_of(overlay)
    assert findings(checker, objects, overlay) == []
    breaks(objects)
    found = findings(checker, objects, overlay)
    assert any(expected in f for f in found), "\n".join(found) or "no findings"


@pytest.mark.integration
def test_references_need_the_operator_list(
    checker: ModuleType, render_of: Callable[[str], list[Obj]]
) -> None:
    """The gpu overlay creates no Secrets: without operator-provided.yaml every Secret it reads is a finding."""
    objects = render_of("overlays/gpu")
    found = findings(checker, objects, "overlays/gpu", provided=checker.Provided())
    for secret in ("charter-database", "charter-tokens", "charter-trainer-worker-env", "charter-vllm",
                   "charter-review-tls"):  # fmt: skip
        assert any(f"Secret {secret!r} is neither defined nor operator-provided" in f for f in found), secret


@pytest.mark.integration
def test_schemas_are_strict_for_built_in_and_custom_kinds(
    checker: ModuleType, render_of: Callable[[str], list[Obj]]
) -> None:
    objects = render_of("overlays/gpu-full")
    assert checker.validate_schemas(objects) == []
    container(objects, "charter-judge")["securityContext"]["readOnlyRootFS"] = True  # a typo
    find(objects, "ServiceMonitor", "charter-vllm")["spec"]["endpoints"][0]["intervall"] = "30s"
    objects.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    found = "\n".join(checker.validate_schemas(objects))
    for version in checker.K8S_VERSIONS:
        assert f"Deployment/charter-judge: Kubernetes {version} schema" in found
    assert "'readOnlyRootFS' was unexpected" in found
    assert "ServiceMonitor/charter-vllm: spec.endpoints.0: Additional properties" in found
    assert "Widget/w: no Kubernetes" in found


@pytest.mark.integration
def test_every_render_is_clean(checker: ModuleType, render_of: Callable[[str], list[Obj]]) -> None:
    for target in checker.targets():
        name = str(target.relative_to(checker.DEPLOY))
        problems, workers = checker.check_render(
            render_of(name), checker.Provided.load(target / "operator-provided.yaml")
        )
        assert problems == [], name
        if name.startswith("overlays/"):  # the trainer's worker Job is part of every full install
            assert [w["kind"] for w in workers] == ["Job", "ConfigMap"], name


def test_stale_constitution_copy_is_a_finding(
    checker: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = tmp_path / "constitutions"
    edited.mkdir()
    for source in checker.CONSTITUTIONS.glob("*.yaml"):
        (edited / source.name).write_bytes(source.read_bytes())
    assert checker.constitution_copies() == []
    harmless = edited / "harmless.yaml"
    harmless.write_text(harmless.read_text() + "\n# an edit\n")
    monkeypatch.setattr(checker, "CONSTITUTIONS", edited)
    found = checker.constitution_copies()
    assert any("harmless.yaml differs from constitutions/harmless.yaml" in f for f in found), found
    assert any("--sync-constitutions" in f for f in found)


def test_missing_kubectl_fails_loudly(
    checker: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checker.shutil, "which", lambda name: None)
    monkeypatch.setattr(checker, "KUBECTL_FALLBACKS", (tmp_path / "kubectl",))
    with pytest.raises(SystemExit, match="no kubectl"):
        checker.find_kustomize()


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_check_deploy_passes() -> None:
    """The whole check as CI runs it: renders, schemas, consistency, yamllint and checkov (installing
    the lint tools into .venv-deploy-tools on first use)."""
    result = subprocess.run(
        [sys.executable, "scripts/check_deploy.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=880,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    kustomizations = sum(
        len(list((ROOT / "deploy" / g).glob("*/kustomization.yaml"))) for g in ("overlays", "jobs")
    )
    assert f"check_deploy: OK ({kustomizations} renders, 0 findings)" in result.stdout
    assert "checkov: 0 failed" in result.stdout


@pytest.mark.integration
def test_constitutions_update_in_place_and_settings_roll(renders: dict[str, list[Obj]]) -> None:
    """The constitutions ConfigMap keeps its name (an edit updates it in place, and the kubelet swaps
    the mounted files in running pods); the settings ConfigMap's name carries a content hash (an edit
    rolls the pods, which read settings once at start-up)."""
    for overlay in ("overlays/dev", "overlays/gpu"):
        objects = renders[overlay]
        names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
        assert "charter-constitutions" in names
        settings = next(n for n in names if n.startswith("charter-settings"))
        assert settings != "charter-settings" and len(settings) > len("charter-settings-")
        constitutions = find(objects, "ConfigMap", "charter-constitutions")["data"]
        assert sorted(constitutions) == sorted(p.name for p in (ROOT / "constitutions").glob("*.yaml"))
        for name in ("charter-critic-reviser", "charter-judge"):
            volume = next(v for v in pod(objects, name)["volumes"] if v["name"] == "constitutions")
            assert volume["configMap"]["name"] == "charter-constitutions"

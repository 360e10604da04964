"""Check Charter's Kubernetes manifests offline: render, validate, cross-check, lint (issue 8).

No cluster is needed. For every kustomization under deploy/overlays/ and deploy/jobs/:

1. render it with `kubectl kustomize` (the kustomize that `kubectl apply -k` uses);
2. validate every object against the Kubernetes schemas with kubernetes-validate, strict (unknown
   fields are errors), for the oldest and the newest Kubernetes versions supported (K8S_VERSIONS).
   Custom resources (the Prometheus Operator's ServiceMonitor) have no schema there: they get a
   minimal schema of our own (CRD_SCHEMAS);
3. check the objects are consistent with each other (deploy_consistency.py and deploy_pods.py, over
   deploy_objects.py: selectors, ports, references, images, resources, pod security,
   HPA/PDB/NetworkPolicy targets), with the objects the overlay leaves to the operator declared in
   its operator-provided.yaml;
4. check Charter's settings against the manifests (deploy_settings.py), including one worker Job
   rendered from the trainer's own template, which steps 2 and 3 check too;

then, across deploy/:

5. the constitutions ConfigMap's files equal the repository's constitutions/ (kustomize reads
   files only below the kustomization: deploy/base/constitutions/ holds copies);
6. yamllint --strict over the sources, and checkov (framework kubernetes) over every render, with
   zero failed checks; every skipped check is listed with its reason in deploy/checks/checkov.yaml
   or in a `checkov.io/skip` annotation. Both tools live in their own virtual environment
   (.venv-deploy-tools, created on first use from deploy/checks/requirements.txt);
7. the monitoring component's Grafana dashboard and alert rules (monitoring_checks.py): structure,
   PromQL parsed (promql-parser from the tools venv; a balance check with --no-lint), metric names.

Usage:
    python scripts/check_deploy.py                       # everything; exit 1 on any finding
    python scripts/check_deploy.py --no-lint             # steps 1-5 only (no tools venv)
    python scripts/check_deploy.py --out /tmp/renders    # also keep the rendered YAML
    python scripts/check_deploy.py --sync-constitutions  # refresh deploy/base/constitutions/
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from deploy_consistency import check
from deploy_objects import Obj, Provided, Render, ref
from deploy_settings import check as check_settings
from monitoring_checks import CRD_SCHEMAS as MONITORING_CRD_SCHEMAS
from monitoring_checks import check as check_monitoring
from monitoring_checks import crd_schema

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONSTITUTIONS = ROOT / "constitutions"
DEPLOY_CONSTITUTIONS = DEPLOY / "base" / "constitutions"
CHECKS = DEPLOY / "checks"
TOOLS_VENV = ROOT / ".venv-deploy-tools"
# the oldest Kubernetes the manifests support (native preStop sleep, GA gRPC probes) and a recent one
K8S_VERSIONS = ("1.30", "1.34")
# where the Google Cloud SDK puts kubectl (the CI machines' kubectl); PATH is searched first
KUBECTL_FALLBACKS = (Path("/usr/lib/google-cloud-sdk/bin/kubectl"),)

_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "targetPort": {"type": ["string", "integer"]},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "honorLabels": {"type": "boolean"},
    },
    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
# kubernetes-validate knows only the built-in kinds: the custom resources deploy/ uses get the subset
# of their CRD's schema that deploy/ writes (anything else is an error, as with --strict)
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd_schema(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
            },
        },
    ),
}

CRD_SCHEMAS.update(MONITORING_CRD_SCHEMAS)  # PrometheusRule


# -- rendering ----------------------------------------------------------------------------------


def find_kustomize(explicit: str | None = None) -> list[str]:
    """The command that renders a kustomization: `kubectl kustomize` (PATH, then the Cloud SDK's
    kubectl), else a standalone `kustomize build`. Never silently nothing."""
    if explicit is not None and not Path(explicit).is_file():
        raise SystemExit(f"check_deploy: --kubectl {explicit}: no such file")
    candidates = [explicit] if explicit else [shutil.which("kubectl"), *map(str, KUBECTL_FALLBACKS)]
    for kubectl in filter(None, candidates):
        if Path(kubectl).is_file():
            return [kubectl, "kustomize"]
    if explicit is None and (kustomize := shutil.which("kustomize")):
        return [kustomize, "build"]
    raise SystemExit(
        "check_deploy: no kubectl (searched PATH and "
        f"{', '.join(map(str, KUBECTL_FALLBACKS))}) and no kustomize on PATH. Install kubectl (it bundles "
        "kustomize), or pass --kubectl PATH."
    )


def targets() -> list[Path]:
    """Every installable kustomization: deploy/overlays/* and deploy/jobs/*."""
    found = sorted(
        p.parent for group in ("overlays", "jobs") for p in (DEPLOY / group).glob("*/kustomization.yaml")
    )
    if not found:
        raise SystemExit(f"check_deploy: no kustomizations under {DEPLOY}/overlays or /jobs")
    return found


def render(kustomize: list[str], target: Path) -> tuple[str, list[Obj]]:
    result = subprocess.run([*kustomize, str(target)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RenderError(f"{_rel(target)}: kustomize failed: {result.stderr.strip()}")
    return result.stdout, [o for o in yaml.safe_load_all(result.stdout) if o]


class RenderError(Exception):
    pass


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- schemas --------------------------------------------------------------------------------------


def validate_schemas(objects: list[Obj]) -> list[str]:
    problems = []
    for obj in objects:
        crd = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
        if crd is not None:
            for err in jsonschema.Draft7Validator(crd).iter_errors(obj):
                problems.append(f"{ref(obj)}: {'.'.join(map(str, err.path)) or '<root>'}: {err.message}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(
                    f"{ref(obj)}: no Kubernetes {version} schema for {obj.get('apiVersion')} "
                    f"{obj.get('kind')} (a custom resource needs an entry in CRD_SCHEMAS)"
                )
                break
            except kubernetes_validate.ValidationError as err:
                path = ".".join(map(str, err.path)) or "<root>"
                problems.append(f"{ref(obj)}: Kubernetes {version} schema: {path}: {err.message}")
    return problems


def check_render(objects: list[Obj], provided: Provided) -> tuple[list[str], list[Obj]]:
    """Schemas, Charter's settings, then the generic consistency checks over the render plus the
    objects the trainer would create at run time. Returns the findings and those objects."""
    problems = validate_schemas(objects)
    settings_problems, workers = check_settings(Render(objects), dict(provided.secrets))
    problems += settings_problems
    problems += [f"(trainer worker) {p}" for p in validate_schemas(workers)]
    problems += check([*objects, *workers], provided)
    return problems, workers


# checkov findings on the worker Job that the trainer's packaged template (not deploy/) decides,
# skipped on the sample Job only, with the reason
WORKER_CHECKOV_SKIPS = {
    "CKV_K8S_15": "the trainer's Job template pulls IfNotPresent: the image is a pinned tag that the "
    "trainer service's own pod has already pulled on the cluster",
    "CKV_K8S_35": "the trainer's Job template passes trainer.kubernetes.env_from_secret as envFrom "
    "(CHARTER_REVIEW_TOKEN); the worker could read CHARTER_REVIEW_TOKEN_FILE from a mounted Secret instead",
}


def worker_yaml(workers: list[Obj]) -> str:
    """The run-time objects as YAML for checkov, the template's own choices annotated as skipped."""
    annotated = yaml.safe_load(yaml.safe_dump(workers))
    for obj in annotated:
        if obj.get("kind") == "Job":
            notes = obj["metadata"].setdefault("annotations", {})
            for i, (check_id, reason) in enumerate(WORKER_CHECKOV_SKIPS.items(), start=1):
                notes[f"checkov.io/skip{i}"] = f"{check_id}={reason}"
    return "---\n" + yaml.safe_dump_all(annotated, sort_keys=False)


# -- constitutions ----------------------------------------------------------------------------------


def constitution_copies() -> list[str]:
    source = sorted(p.name for p in CONSTITUTIONS.glob("*.yaml"))
    copies = sorted(p.name for p in DEPLOY_CONSTITUTIONS.glob("*.yaml"))
    problems = []
    if source != copies:
        problems.append(f"{_rel(DEPLOY_CONSTITUTIONS)} holds {copies}, constitutions/ holds {source}")
    for name in set(source) & set(copies):
        if not filecmp.cmp(CONSTITUTIONS / name, DEPLOY_CONSTITUTIONS / name, shallow=False):
            problems.append(f"{_rel(DEPLOY_CONSTITUTIONS / name)} differs from constitutions/{name}")
    listed = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    generator = next(g for g in listed["configMapGenerator"] if g["name"] == "charter-constitutions")
    if sorted(Path(f).name for f in generator["files"]) != source:
        problems.append(f"deploy/base/kustomization.yaml: charter-constitutions lists {generator['files']}")
    if problems:
        problems.append("run `python scripts/check_deploy.py --sync-constitutions` (and list new files)")
    return problems


def sync_constitutions() -> None:
    DEPLOY_CONSTITUTIONS.mkdir(parents=True, exist_ok=True)
    for stale in DEPLOY_CONSTITUTIONS.glob("*.yaml"):
        if not (CONSTITUTIONS / stale.name).exists():
            stale.unlink()
    for source in CONSTITUTIONS.glob("*.yaml"):
        shutil.copyfile(source, DEPLOY_CONSTITUTIONS / source.name)
    print(f"copied {len(list(CONSTITUTIONS.glob('*.yaml')))} constitutions to {_rel(DEPLOY_CONSTITUTIONS)}")


# -- lint tools ---------------------------------------------------------------------------------


def ensure_tools(venv_dir: Path) -> Path:
    """The tools venv's bin folder, (re)built when deploy/checks/requirements.txt changed."""
    requirements = (CHECKS / "requirements.txt").read_text(encoding="utf-8")
    stamp = venv_dir / ".charter-requirements"
    bin_dir = venv_dir / "bin"
    if stamp.exists() and stamp.read_text(encoding="utf-8") == requirements:
        return bin_dir
    started = time.monotonic()
    print(f"check_deploy: installing the lint tools into {_rel(venv_dir)} ...", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(CHECKS / "requirements.txt")],
        capture_output=True, text=True,
    )  # fmt: skip
    if install.returncode != 0:
        raise SystemExit(f"check_deploy: installing the lint tools failed:\n{install.stdout}{install.stderr}")
    stamp.write_text(requirements, encoding="utf-8")
    print(f"check_deploy: tools installed in {time.monotonic() - started:.0f} s", flush=True)
    return bin_dir


def yamllint(bin_dir: Path) -> list[str]:
    result = subprocess.run(
        [str(bin_dir / "yamllint"), "--strict", "-f", "parsable", "-c", str(CHECKS / "yamllint.yaml"), "."],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 1, 2):
        return [f"yamllint failed to run: {result.stderr.strip()}"]
    return [
        f"yamllint: deploy/{line.removeprefix('./')}" for line in result.stdout.splitlines() if line.strip()
    ]


def checkov(bin_dir: Path, renders: dict[str, str]) -> tuple[list[str], list[str]]:
    """Failed checks (findings) and skipped checks (for the report) over every render."""
    with tempfile.TemporaryDirectory(prefix="charter-renders-") as tmp:
        for name, text in renders.items():
            (Path(tmp) / f"{name.replace('/', '__')}.yaml").write_text(text, encoding="utf-8")
        result = subprocess.run(
            [str(bin_dir / "checkov"), "-d", tmp, "--framework", "kubernetes", "--config-file",
             str(CHECKS / "checkov.yaml"), "--output", "json", "--compact"],
            capture_output=True, text=True,
        )  # fmt: skip
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"checkov failed to run (exit {result.returncode}): {result.stderr.strip()[-2000:]}"], []
    failed, skipped = [], []
    for report in reports if isinstance(reports, list) else [reports]:
        results = report.get("results") or {}
        for c in results.get("failed_checks") or []:
            failed.append(
                f"checkov {c['check_id']} ({c['check_name']}): {c['resource']} in {Path(c['file_path']).name}"
            )
        for c in results.get("skipped_checks") or []:
            reason = (c.get("check_result") or {}).get("suppress_comment") or ""
            skipped.append(f"{c['check_id']} {c['resource']}: {reason}")
    if result.returncode not in (0, 1) or (result.returncode == 1 and not failed):
        failed.append(f"checkov exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return failed, skipped


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-lint", action="store_true", help="skip yamllint and checkov (no tools venv)")
    parser.add_argument("--kubectl", help="kubectl to render with (default: PATH, then the Cloud SDK's)")
    parser.add_argument("--tools-venv", type=Path, default=TOOLS_VENV, help="virtual env for the lint tools")
    parser.add_argument("--out", type=Path, help="write each render here as <target>.yaml")
    parser.add_argument("--sync-constitutions", action="store_true", help="copy constitutions/ into deploy/")
    args = parser.parse_args(argv)
    if args.sync_constitutions:
        sync_constitutions()
        return 0

    problems = constitution_copies()
    kustomize = find_kustomize(args.kubectl)
    renders: dict[str, str] = {}
    for target in targets():
        name = str(target.relative_to(DEPLOY))
        try:
            text, objects = render(kustomize, target)
        except RenderError as err:
            problems.append(str(err))
            continue
        provided = Provided.load(target / "operator-provided.yaml")
        found, workers = check_render(objects, provided)
        renders[name] = text + (worker_yaml(workers) if workers else "")
        problems += [f"{name}: {p}" for p in found]
        print(f"check_deploy: {name}: {len(objects)} objects, {len(found)} findings", flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name.replace('/', '__')}.yaml").write_text(text, encoding="utf-8")

    if not args.no_lint:
        bin_dir = ensure_tools(args.tools_venv)
        problems += yamllint(bin_dir)
        failed, skipped = checkov(bin_dir, renders)
        problems += failed
        everywhere = (
            yaml.safe_load((CHECKS / "checkov.yaml").read_text(encoding="utf-8")).get("skip-check") or []
        )
        print(
            f"check_deploy: checkov: {len(failed)} failed; skipped everywhere (reasons in "
            f"deploy/checks/checkov.yaml): {', '.join(everywhere) or 'none'}; skipped per object:"
        )
        for line in sorted(set(skipped)):
            print(f"  {line}")

    monitoring = check_monitoring(None if args.no_lint else ensure_tools(args.tools_venv))
    print(f"check_deploy: monitoring dashboard and rules: {len(monitoring)} findings", flush=True)
    problems += monitoring

    for problem in problems:
        print(f"FAIL {problem}")
    print(
        f"check_deploy: {'FAILED' if problems else 'OK'} ({len(renders)} renders, {len(problems)} findings)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""A rendered set of Kubernetes objects as the deploy checks see it (scripts/deploy_consistency.py,
scripts/deploy_pods.py, scripts/deploy_settings.py): the objects as dicts, the pod templates of the
workloads, label selectors, and the ConfigMaps, Secrets, claims and accounts the operator provides.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


@dataclass(frozen=True)
class Provided:
    """Objects a render refers to but leaves to the operator (an overlay's operator-provided.yaml),
    with the keys the manifests read from them."""

    secrets: dict[str, frozenset[str]] = field(default_factory=dict)
    configmaps: dict[str, frozenset[str]] = field(default_factory=dict)
    persistentvolumeclaims: frozenset[str] = frozenset()
    serviceaccounts: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path) -> Provided:
        if not path.exists():
            return cls()
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        unknown = set(data) - {"secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts"}
        if unknown:
            raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
        return cls(
            secrets={k: frozenset(v or []) for k, v in (data.get("secrets") or {}).items()},
            configmaps={k: frozenset(v or []) for k, v in (data.get("configmaps") or {}).items()},
            persistentvolumeclaims=frozenset(data.get("persistentvolumeclaims") or []),
            serviceaccounts=frozenset(data.get("serviceaccounts") or []),
        )


@dataclass(frozen=True)
class PodTemplate:
    """A pod as some object describes it: the owner, its labels and its spec."""

    owner: Obj
    labels: dict[str, str]
    spec: Obj

    @property
    def ref(self) -> str:
        return ref(self.owner)

    def containers(self, *, init: bool = True) -> Iterator[Obj]:
        yield from self.spec.get("containers") or []
        if init:
            yield from self.spec.get("initContainers") or []


def ref(obj: Obj) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def pod_template(obj: Obj) -> PodTemplate | None:
    kind = obj.get("kind")
    if kind == "Pod":
        template: Obj | None = obj
    elif kind == "CronJob":
        template = ((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template")
    elif kind in WORKLOAD_KINDS:
        template = (obj.get("spec") or {}).get("template")
    else:
        return None
    if not template:
        return None
    labels = (template.get("metadata") or {}).get("labels") or {}
    return PodTemplate(obj, dict(labels), template.get("spec") or {})


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) or a plain map (Service) against labels."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        match, expressions = selector, []
    else:
        match, expressions = selector.get("matchLabels") or {}, selector.get("matchExpressions") or []
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for e in expressions:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


class Render:
    """The objects of one render, indexed."""

    def __init__(self, objects: list[Obj]) -> None:
        self.objects = objects
        self.pods = [p for p in map(pod_template, objects) if p is not None]

    def named(self, kind: str) -> dict[str, Obj]:
        return {o["metadata"]["name"]: o for o in self.objects if o.get("kind") == kind}

    def pods_selected(self, selector: Obj | None) -> list[PodTemplate]:
        return [p for p in self.pods if selects(selector, p.labels)]

    def data_keys(self, kind: str, name: str) -> set[str] | None:
        obj = self.named(kind).get(name)
        if obj is None:
            return None
        return (
            set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})
        )


def ports(pod: PodTemplate) -> tuple[set[str], set[int]]:
    names, numbers = set(), set()
    for c in pod.containers():
        for p in c.get("ports") or []:
            numbers.add(p.get("containerPort"))
            if p.get("name"):
                names.add(p["name"])
    return names, numbers


def has_port(port: Any, names: set[str], numbers: set[int]) -> bool:
    return port in names if isinstance(port, str) else port in numbers


def container_port(pod: PodTemplate, target: Any) -> int | None:
    """The number a Service's targetPort (a name or a number) is in `pod`."""
    for c in pod.containers():
        for p in c.get("ports") or []:
            if target in (p.get("name"), p.get("containerPort")):
                return p.get("containerPort")
    return None

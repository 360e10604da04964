"""Consistency checks over a rendered set of Kubernetes objects — what schemas cannot see.

Pure functions over the objects as dicts (no cluster, no kubectl); `scripts/check_deploy.py` runs
them on every render of `deploy/`. Each finding is one line, `Kind/name: what is wrong`:

- every Service selects some workload's pods, and its target ports exist in those pods; a headless
  Service (`clusterIP: None`: clients dial the pods) serves each port on the pods' own number; a
  gRPC Service of pods an HPA scales is headless (behind a ClusterIP, a client's one HTTP/2
  connection reaches one pod, so its load never spreads: docs/architecture.md, "Load balancing");
- every probe's port (named or numbered) exists among the container's ports; long-running
  containers have readiness and liveness probes;
- every ConfigMap, Secret, PVC and ServiceAccount a pod refers to (volumes, env, envFrom,
  serviceAccountName, imagePullSecrets), every key it reads from them, every Secret an Ingress
  names and every Role a RoleBinding names is defined in the render or declared operator-provided;
  ConfigMap and Secret volumes are never mounted with subPath (such mounts never see updates);
- images carry a tag other than `latest` (or a digest);
- every container has cpu and memory requests and limits;
- pod security: non-root uid/gid, seccomp RuntimeDefault, no privilege escalation, read-only root
  filesystem, all capabilities dropped, `enableServiceLinks: false`, and a service-account token
  only where the account is bound to a Role;
- HPAs, PDBs, NetworkPolicies and ServiceMonitors select something that exists;
- every namespaced object is in the one namespace of the render.

Example:
    problems = check(objects, Provided(secrets={"charter-database": {"review-url"}}))
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


def _ports(pod: PodTemplate) -> tuple[set[str], set[int]]:
    names, numbers = set(), set()
    for c in pod.containers():
        for p in c.get("ports") or []:
            numbers.add(p.get("containerPort"))
            if p.get("name"):
                names.add(p["name"])
    return names, numbers


def _has_port(port: Any, names: set[str], numbers: set[int]) -> bool:
    return port in names if isinstance(port, str) else port in numbers


# -- the checks ----------------------------------------------------------------------------------


def check_namespaces(r: Render) -> list[str]:
    namespaced = [o for o in r.objects if o.get("kind") not in CLUSTER_SCOPED]
    spaces = {(o.get("metadata") or {}).get("namespace") for o in namespaced}
    problems = [f"{ref(o)}: no metadata.namespace" for o in namespaced if not o["metadata"].get("namespace")]
    spaces.discard(None)
    if len(spaces) > 1:
        problems.append(f"the render spans several namespaces: {sorted(spaces)}")
    for ns in r.named("Namespace"):
        if spaces and ns not in spaces:
            problems.append(f"Namespace/{ns}: the objects live in {sorted(spaces)}")
    seen: set[tuple[str, str]] = set()
    for o in r.objects:
        key = (o.get("kind"), o["metadata"].get("name"))
        if key in seen:
            problems.append(f"{ref(o)}: defined twice")
        seen.add(key)
    return problems


def check_services(r: Render) -> list[str]:
    problems = []
    for name, svc in r.named("Service").items():
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        selector = spec.get("selector")
        if not selector:
            problems.append(f"Service/{name}: no selector")
            continue
        pods = r.pods_selected(selector)
        if not pods:
            problems.append(f"Service/{name}: selector {selector} matches no workload's pods")
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if not any(_has_port(target, *_ports(p)) for p in pods):
                problems.append(
                    f"Service/{name}: port {port.get('name') or port.get('port')} targets {target!r}, "
                    f"which no selected pod ({', '.join(sorted({p.ref for p in pods}))}) exposes"
                )
            elif spec.get("clusterIP") == "None":
                numbers = {_container_port(p, target) for p in pods} - {None}
                if numbers != {port.get("port")}:
                    problems.append(
                        f"Service/{name}: headless, so clients dial the pods on port {port.get('port')}, "
                        f"but {port.get('name') or port.get('port')} targets container port "
                        f"{', '.join(map(str, sorted(numbers)))}"
                    )
    return problems


def _container_port(pod: PodTemplate, target: Any) -> int | None:
    """The number a Service's targetPort (a name or a number) is in `pod`."""
    for c in pod.containers():
        for p in c.get("ports") or []:
            if target in (p.get("name"), p.get("containerPort")):
                return p.get("containerPort")
    return None


def _headless_for_scaled_grpc(r: Render, hpa: str, workload: Obj) -> list[str]:
    """A gRPC Service in front of pods an HPA scales must be headless, or one client's calls all go
    to one pod however many there are."""
    pod = pod_template(workload)
    problems = []
    for name, svc in r.named("Service").items():
        spec = svc.get("spec") or {}
        if pod is None or not spec.get("selector") or not selects(spec["selector"], pod.labels):
            continue
        grpc = any(p.get("appProtocol") == "grpc" for p in spec.get("ports") or [])
        if grpc and spec.get("clusterIP") != "None":
            problems.append(
                f"Service/{name}: gRPC in front of {ref(workload)}, which HorizontalPodAutoscaler/{hpa} "
                "scales, but not headless (clusterIP: None): each client's connection would reach one pod"
            )
    return problems


def check_probes(r: Render) -> list[str]:
    problems = []
    for pod in r.pods:
        for c in pod.containers(init=False):
            names = {p["name"] for p in c.get("ports") or [] if p.get("name")}
            numbers = {p.get("containerPort") for p in c.get("ports") or []}
            where = f"{pod.ref} container {c.get('name')}"
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    if pod.owner["kind"] in LONG_RUNNING and kind != "startupProbe":
                        problems.append(f"{where}: no {kind}")
                    continue
                for action in ("httpGet", "tcpSocket", "grpc"):
                    if action in probe and not _has_port(probe[action].get("port"), names, numbers):
                        problems.append(
                            f"{where}: {kind} {action} port {probe[action].get('port')!r} is not one of "
                            f"the container's ports ({sorted(names) or sorted(numbers)})"
                        )
    return problems


def _defined(r: Render, provided: Provided, kind: str, name: str) -> tuple[bool, set[str] | None]:
    """Whether a ConfigMap/Secret exists (render or operator), and its keys where known."""
    keys = r.data_keys(kind, name)
    if keys is not None:
        return True, keys
    table = provided.secrets if kind == "Secret" else provided.configmaps
    if name in table:
        return True, set(table[name])
    return False, None


def _check_ref(
    r: Render, provided: Provided, where: str, kind: str, name: str, key: str | None, optional: bool
) -> list[str]:
    exists, keys = _defined(r, provided, kind, name)
    if not exists:
        return [] if optional else [f"{where}: {kind} {name!r} is neither defined nor operator-provided"]
    if key is not None and keys is not None and key not in keys and not optional:
        return [f"{where}: {kind} {name!r} has no key {key!r} (keys: {sorted(keys)})"]
    return []


def check_references(r: Render, provided: Provided) -> list[str]:
    problems: list[str] = []
    pvcs = set(r.named("PersistentVolumeClaim")) | provided.persistentvolumeclaims
    accounts = set(r.named("ServiceAccount")) | provided.serviceaccounts
    for pod in r.pods:
        spec = pod.spec
        where = pod.ref
        account = spec.get("serviceAccountName")
        if account and account not in accounts:
            problems.append(f"{where}: ServiceAccount {account!r} is neither defined nor operator-provided")
        for secret in spec.get("imagePullSecrets") or []:
            problems += _check_ref(r, provided, where, "Secret", secret.get("name"), None, False)
        templates = {
            t["metadata"]["name"] for t in (pod.owner.get("spec") or {}).get("volumeClaimTemplates") or []
        }
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for v in volumes.values():
            problems += _volume_refs(r, provided, f"{where} volume {v['name']}", v, pvcs)
        for c in pod.containers():
            cwhere = f"{where} container {c.get('name')}"
            for m in c.get("volumeMounts") or []:
                volume = volumes.get(m.get("name"))
                if volume is None and m.get("name") not in templates:
                    problems.append(
                        f"{cwhere}: mounts volume {m.get('name')!r}, which the pod does not define"
                    )
                elif volume is not None and m.get("subPath") and _updatable(volume):
                    problems.append(
                        f"{cwhere}: mounts {m['name']} with subPath: a ConfigMap/Secret mounted by subPath "
                        "never sees updates; mount the folder"
                    )
            for e in c.get("env") or []:
                source = e.get("valueFrom") or {}
                for kind, key_ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if key_ref in source:
                        s = source[key_ref]
                        problems += _check_ref(
                            r, provided, f"{cwhere} env {e.get('name')}", kind, s.get("name"), s.get("key"),
                            bool(s.get("optional")),
                        )  # fmt: skip
            for e in c.get("envFrom") or []:
                for kind, key_ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key_ref in e:
                        s = e[key_ref]
                        problems += _check_ref(
                            r,
                            provided,
                            f"{cwhere} envFrom",
                            kind,
                            s.get("name"),
                            None,
                            bool(s.get("optional")),
                        )
    for name, ingress in r.named("Ingress").items():
        for tls in (ingress.get("spec") or {}).get("tls") or []:
            problems += _check_ref(
                r, provided, f"Ingress/{name} tls", "Secret", tls.get("secretName"), None, False
            )
    return problems


def _updatable(volume: Obj) -> bool:
    return any(k in volume for k in ("configMap", "secret", "projected", "downwardAPI"))


def _volume_refs(r: Render, provided: Provided, where: str, volume: Obj, pvcs: set[str]) -> list[str]:
    problems: list[str] = []
    sources = [volume] + [s for s in (volume.get("projected") or {}).get("sources") or []]
    for s in sources:
        for kind, key, name_key in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
            if key not in s:
                continue
            body = s[key]
            name = body.get(name_key) or body.get("name")
            optional = bool(body.get("optional"))
            items = [i.get("key") for i in body.get("items") or []] or [None]
            for item in items:
                problems += _check_ref(r, provided, where, kind, name, item, optional)
    claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
    if claim is not None and claim not in pvcs:
        problems.append(f"{where}: PersistentVolumeClaim {claim!r} is neither defined nor operator-provided")
    return problems


def check_images(r: Render) -> list[str]:
    problems = []
    for pod in r.pods:
        for c in pod.containers():
            image = c.get("image") or ""
            name, _, digest = image.partition("@")
            tag = name.rsplit("/", 1)[-1].partition(":")[2]
            if not image:
                problems.append(f"{pod.ref} container {c.get('name')}: no image")
            elif not digest and (not tag or tag == "latest"):
                problems.append(
                    f"{pod.ref} container {c.get('name')}: image {image!r} is not pinned "
                    "(use a version tag other than latest, or a digest)"
                )
    return problems


def check_resources(r: Render) -> list[str]:
    problems = []
    for pod in r.pods:
        for c in pod.containers():
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = [k for k in ("cpu", "memory") if k not in (res.get(part) or {})]
                if missing:
                    problems.append(
                        f"{pod.ref} container {c.get('name')}: no {part} for {', '.join(missing)}"
                    )
            requests, limits = res.get("requests") or {}, res.get("limits") or {}
            for k in set(requests) & set(limits):
                if "/" in k and str(requests[k]) != str(limits[k]):
                    problems.append(
                        f"{pod.ref} container {c.get('name')}: {k} request {requests[k]} differs from its "
                        f"limit {limits[k]} (extended resources cannot be overcommitted)"
                    )
    return problems


def check_security(r: Render) -> list[str]:
    problems = []
    bound = _bound_accounts(r)
    for pod in r.pods:
        spec, where = pod.spec, pod.ref
        psc = spec.get("securityContext") or {}
        if spec.get("enableServiceLinks") is not False:
            problems.append(f"{where}: set enableServiceLinks: false")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{where}: {key} is on")
        account = spec.get("serviceAccountName") or "default"
        if spec.get("automountServiceAccountToken") is not False and account not in bound:
            problems.append(
                f"{where}: mounts a service-account token, but {account!r} is bound to no Role "
                "(set automountServiceAccountToken: false)"
            )
        for c in pod.containers():
            csc = c.get("securityContext") or {}
            cwhere = f"{where} container {c.get('name')}"

            def effective(key: str, csc: Obj = csc, psc: Obj = psc) -> Any:
                return csc.get(key, psc.get(key))

            if effective("runAsNonRoot") is not True:
                problems.append(f"{cwhere}: runAsNonRoot is not true")
            for key in ("runAsUser", "runAsGroup"):
                value = effective(key)
                if not isinstance(value, int) or value <= 0:
                    problems.append(f"{cwhere}: {key} is {value!r}; set a non-root id")
            if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{cwhere}: seccompProfile is not RuntimeDefault")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation is not false")
            if csc.get("privileged"):
                problems.append(f"{cwhere}: privileged")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: readOnlyRootFilesystem is not true")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{cwhere}: capabilities do not drop ALL")
            if caps.get("add"):
                problems.append(f"{cwhere}: adds capabilities {caps['add']}")
    for name, account in r.named("ServiceAccount").items():
        if account.get("automountServiceAccountToken") is not False and name not in bound:
            problems.append(
                f"ServiceAccount/{name}: set automountServiceAccountToken: false (it has no Role)"
            )
    return problems


def _bound_accounts(r: Render) -> set[str]:
    return {
        s.get("name")
        for kind in ("RoleBinding", "ClusterRoleBinding")
        for b in r.named(kind).values()
        for s in b.get("subjects") or []
        if s.get("kind") == "ServiceAccount"
    }


def check_rbac(r: Render, provided: Provided) -> list[str]:
    problems = []
    roles = {"Role": set(r.named("Role")), "ClusterRole": set(r.named("ClusterRole"))}
    accounts = set(r.named("ServiceAccount")) | provided.serviceaccounts
    for name, binding in r.named("RoleBinding").items():
        role = binding.get("roleRef") or {}
        if role.get("kind") == "Role" and role.get("name") not in roles["Role"]:
            problems.append(f"RoleBinding/{name}: Role {role.get('name')!r} is not defined")
        for s in binding.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and s.get("name") not in accounts:
                problems.append(f"RoleBinding/{name}: ServiceAccount {s.get('name')!r} is not defined")
    return problems


def check_autoscaling(r: Render) -> list[str]:
    problems = []
    for name, hpa in r.named("HorizontalPodAutoscaler").items():
        spec = hpa.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        obj = r.named(target.get("kind", "")).get(target.get("name"))
        if obj is None:
            missing = f"{target.get('kind')}/{target.get('name')}"
            problems.append(f"HorizontalPodAutoscaler/{name}: target {missing} does not exist")
            continue
        problems += _headless_for_scaled_grpc(r, name, obj)
        if "replicas" in (obj.get("spec") or {}):
            problems.append(
                f"HorizontalPodAutoscaler/{name}: {ref(obj)} also fixes spec.replicas, which every apply "
                "would reset"
            )
        pod = pod_template(obj)
        for metric in spec.get("metrics") or []:
            resource = (metric.get("resource") or {}).get("name")
            if metric.get("type") == "Resource" and pod is not None:
                for c in pod.containers(init=False):
                    if resource not in ((c.get("resources") or {}).get("requests") or {}):
                        problems.append(
                            f"HorizontalPodAutoscaler/{name}: scales on {resource} utilisation, but "
                            f"{ref(obj)} container {c.get('name')} requests no {resource}"
                        )
    for name, pdb in r.named("PodDisruptionBudget").items():
        if not r.pods_selected((pdb.get("spec") or {}).get("selector") or {}):
            problems.append(f"PodDisruptionBudget/{name}: its selector matches no workload's pods")
    return problems


def check_network_policies(r: Render) -> list[str]:
    problems = []
    for name, policy in r.named("NetworkPolicy").items():
        spec = policy.get("spec") or {}
        selector = spec.get("podSelector")
        targets = r.pods if selector in ({}, None) else r.pods_selected(selector)
        if selector not in ({}, None) and not targets:
            problems.append(f"NetworkPolicy/{name}: podSelector {selector} matches no workload's pods")
            continue
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            for rule in spec.get(direction) or []:
                peer_pods: list[PodTemplate] = []
                for peer in rule.get(peers_key) or []:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        matched = r.pods_selected(peer["podSelector"])
                        if not matched:
                            problems.append(
                                f"NetworkPolicy/{name}: {direction} peer podSelector {peer['podSelector']} "
                                "matches no workload's pods"
                            )
                        peer_pods += matched
                # an ingress port is the selected pods' port; an egress port is the peers'
                holders = targets if direction == "ingress" else peer_pods
                for port in rule.get("ports") or []:
                    value = port.get("port")
                    if value is None or not holders or (direction == "egress" and isinstance(value, str)):
                        continue
                    if not any(_has_port(value, *_ports(p)) for p in holders):
                        problems.append(
                            f"NetworkPolicy/{name}: {direction} port {value!r} is exposed by none of "
                            f"{', '.join(sorted({p.ref for p in holders}))}"
                        )
    return problems


def check_ingresses(r: Render) -> list[str]:
    problems = []
    services = r.named("Service")
    for name, ingress in r.named("Ingress").items():
        spec = ingress.get("spec") or {}
        if not spec.get("ingressClassName"):
            problems.append(f"Ingress/{name}: no ingressClassName")
        backends = [spec["defaultBackend"]] if spec.get("defaultBackend") else []
        for rule in spec.get("rules") or []:
            backends += [p.get("backend") or {} for p in (rule.get("http") or {}).get("paths") or []]
        for backend in backends:
            svc = backend.get("service") or {}
            target = services.get(svc.get("name"))
            if target is None:
                problems.append(f"Ingress/{name}: backend Service {svc.get('name')!r} is not defined")
                continue
            port = svc.get("port") or {}
            ports = target["spec"].get("ports") or []
            if not any(
                p.get("name") == port.get("name") or p.get("port") == port.get("number") for p in ports
            ):
                problems.append(f"Ingress/{name}: Service/{svc.get('name')} has no port {port}")
    return problems


def check_service_monitors(r: Render) -> list[str]:
    problems = []
    services = r.named("Service")
    for name, monitor in r.named("ServiceMonitor").items():
        spec = monitor.get("spec") or {}
        matched = [
            s
            for s in services.values()
            if selects(spec.get("selector"), (s.get("metadata") or {}).get("labels") or {})
        ]
        if not matched:
            problems.append(f"ServiceMonitor/{name}: its selector matches no Service's labels")
            continue
        for endpoint in spec.get("endpoints") or []:
            port = endpoint.get("port")
            lacking = [
                ref(s) for s in matched if port not in {p.get("name") for p in s["spec"].get("ports") or []}
            ]
            if port is not None and lacking:
                problems.append(f"ServiceMonitor/{name}: endpoint port {port!r} is not a port of {lacking}")
    return problems


def check(objects: list[Obj], provided: Provided | None = None) -> list[str]:
    """Every finding over `objects` (a render), as lines."""
    provided = provided or Provided()
    r = Render(objects)
    return [
        *check_namespaces(r),
        *check_services(r),
        *check_probes(r),
        *check_references(r, provided),
        *check_images(r),
        *check_resources(r),
        *check_security(r),
        *check_rbac(r, provided),
        *check_autoscaling(r),
        *check_network_policies(r),
        *check_ingresses(r),
        *check_service_monitors(r),
    ]

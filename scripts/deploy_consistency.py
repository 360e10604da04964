"""Consistency checks over a rendered set of Kubernetes objects — what schemas cannot see.

Pure functions over the objects as dicts (no cluster, no kubectl; `deploy_objects.py` indexes them);
`scripts/check_deploy.py` runs them on every render of `deploy/`. The checks of each pod template
(probes, references, images, resources, security) are in `deploy_pods.py`; `check` runs all. Each
finding is one line, `Kind/name: what is wrong`:

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

from deploy_objects import (
    CLUSTER_SCOPED,
    Obj,
    PodTemplate,
    Provided,
    Render,
    container_port,
    has_port,
    pod_template,
    ports,
    ref,
    selects,
)
from deploy_pods import (
    check_images,
    check_probes,
    check_references,
    check_resources,
    check_security,
)


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
            if not any(has_port(target, *ports(p)) for p in pods):
                problems.append(
                    f"Service/{name}: port {port.get('name') or port.get('port')} targets {target!r}, "
                    f"which no selected pod ({', '.join(sorted({p.ref for p in pods}))}) exposes"
                )
            elif spec.get("clusterIP") == "None":
                numbers = {container_port(p, target) for p in pods} - {None}
                if numbers != {port.get("port")}:
                    problems.append(
                        f"Service/{name}: headless, so clients dial the pods on port {port.get('port')}, "
                        f"but {port.get('name') or port.get('port')} targets container port "
                        f"{', '.join(map(str, sorted(numbers)))}"
                    )
    return problems


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
                    if not any(has_port(value, *ports(p)) for p in holders):
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

"""The deploy checks of each pod template (scripts/deploy_consistency.py runs them): probes on the
container's ports, every ConfigMap, Secret, claim and account a pod refers to defined or
operator-provided (and no ConfigMap/Secret mounted by subPath), pinned images, requests and limits,
and pod security (non-root, seccomp, read-only root, no capabilities, tokens only where bound)."""

from __future__ import annotations

from typing import Any

from deploy_objects import LONG_RUNNING, Obj, Provided, Render, has_port


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
                    if action in probe and not has_port(probe[action].get("port"), names, numbers):
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

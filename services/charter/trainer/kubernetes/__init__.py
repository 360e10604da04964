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
  The PVC holds every run's folder, so checkpoints outlive the pod and a resume finds them. Several
  processes, or a sharding strategy, run under `accelerate launch` with the strategy's accelerate
  config (`accelerate/ddp|fsdp|zero3.yaml`, also at training/accelerate/), which the ConfigMap carries
  as `accelerate.yaml` (`launcher`);
- for a run on several nodes (`spec.resources.nodes` > 1) the Job is an indexed Job, one pod per
  node (completion index = node rank), and a headless Service `charter-run-R-N`, created with the
  Job as its owner (so deleted with it), makes pod 0 reachable as `charter-run-R-N-0.charter-run-R-N`
  for the rendezvous. Only rank 0 reports events and writes the run's files; the run succeeds when
  every node's pod succeeded and fails, with the first failed pod's reason, when any fails.

The handle is `<namespace>/<job-name>`. Object names are DNS-1123 labels of at most 63 characters.
Run ids like `r-0123abcd...` are used as they are; any other id is sanitised and given a hash
suffix. The exact id is kept in the `charter.dev/run-id` annotation.

RBAC: the trainer service's own service account needs this Role in the namespace, and nothing
cluster-wide:

    - apiGroups: ["batch"]   resources: ["jobs"]        verbs: ["create", "get", "delete"]
    - apiGroups: [""]        resources: ["configmaps"]  verbs: ["create", "patch", "delete"]
    - apiGroups: [""]        resources: ["services"]    verbs: ["create"]   (runs on several nodes)
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

from charter.trainer.kubernetes.executor import KubernetesExecutor
from charter.trainer.kubernetes.manifest import (
    APP,
    CONTAINER,
    HOME,
    SPEC_DIR,
    TEMPLATE,
    UID,
    JobOptions,
    job_manifest,
    object_name,
    rendezvous_service,
    run_dir,
    run_resources,
    spec_configmap,
)

__all__ = [
    "APP",
    "CONTAINER",
    "HOME",
    "SPEC_DIR",
    "TEMPLATE",
    "UID",
    "JobOptions",
    "KubernetesExecutor",
    "job_manifest",
    "object_name",
    "rendezvous_service",
    "run_dir",
    "run_resources",
    "spec_configmap",
]

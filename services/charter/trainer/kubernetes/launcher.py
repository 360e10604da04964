"""How a run attempt's worker processes start and find each other on Kubernetes.

One process (one node, one process, DDP): `python -m charter.app.trainer_worker …`. Several processes,
or a sharding strategy: `accelerate launch --config_file <the strategy's config> …`, the config
(`accelerate/<strategy>.yaml`, also at training/accelerate/) carried in the attempt's ConfigMap, so the
pod needs nothing from the image but accelerate. Several nodes: the Job is an indexed Job (one pod per
node, completion index = node rank), a headless Service named after the Job gives pod 0 the name
`<job>-0.<job>`, and every pod runs

    accelerate launch --config_file /etc/charter/run/accelerate.yaml --num_machines N
        --machine_rank $(JOB_COMPLETION_INDEX) --main_process_ip <job>-0.<job> --main_process_port 29500
        --num_processes N*P -m charter.app.trainer_worker --spec … --run-dir …

accelerate rather than a bare torchrun: accelerate launch *is* torchrun here (its static c10d
rendezvous on rank 0's address and port, the ranks fixed by the completion index, no elastic restarts
— with backoffLimit 0 the trainer service decides about retries), and it also turns the strategy's
config into the environment that every `Accelerator` in the worker reads (TRL's trainers and
Charter's PPO alike), so one launcher carries both the rendezvous and the FSDP / ZeRO-3 settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charter.core.errors import InvalidArgument
from charter.trainer.runs import Resources

ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate"
"""ddp.yaml, fsdp.yaml, zero3.yaml (training/accelerate/ links here)."""
CONFIG_KEY = "accelerate.yaml"
"""The accelerate config's key in the attempt's ConfigMap (and its file name in the spec folder)."""
RENDEZVOUS_PORT = 29500
NODE_RANK = "$(JOB_COMPLETION_INDEX)"
"""The node's rank: the indexed Job's completion index, which Kubernetes puts in every container's
environment and substitutes into the command."""


def strategy(resources: Resources) -> str:
    return resources.strategy or "ddp"


def uses_accelerate(resources: Resources) -> bool:
    """Plain `python -m` for one process under DDP; accelerate for anything else."""
    processes = resources.node_count * resources.process_count
    return processes > 1 or strategy(resources) != "ddp"


def accelerate_config(resources: Resources) -> str | None:
    """The text of the run's accelerate config, or None when the worker runs without accelerate."""
    if not uses_accelerate(resources):
        return None
    name = strategy(resources)
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    if not path.is_file():  # admission refuses unknown strategies; a worker's own check does not
        raise InvalidArgument(
            f"spec.resources.strategy={name!r}: no accelerate config {path.name}",
            field="spec.resources.strategy",
            value=name,
        )
    return path.read_text(encoding="utf-8")


def main_process_host(job_name: str) -> str:
    """Pod 0 of the indexed Job `job_name`, through the headless Service of the same name (the pods'
    namespace completes it through the DNS search path)."""
    return f"{job_name}-0.{job_name}"


def command(worker: list[str], job_name: str, spec_dir: str, resources: Resources) -> list[str]:
    """The worker container's command: `worker` (`python -m charter.app.trainer_worker …`) as it is,
    or under accelerate launch (see the module docstring)."""
    processes = resources.process_count
    if processes > max(resources.gpus, 1):
        raise InvalidArgument(
            f"spec.resources.processes={processes} needs a GPU per process, but gpus={resources.gpus}",
            field="spec.resources.processes",
            value=processes,
        )
    if not uses_accelerate(resources):
        return worker
    nodes = resources.node_count
    launch = ["accelerate", "launch", "--config_file", f"{spec_dir}/{CONFIG_KEY}"]
    if nodes > 1:
        launch += [
            "--num_machines", str(nodes), "--machine_rank", NODE_RANK,
            "--main_process_ip", main_process_host(job_name), "--main_process_port", str(RENDEZVOUS_PORT),
        ]  # fmt: skip
    return [*launch, "--num_processes", str(nodes * processes), *worker[1:]]


def rendezvous_service(metadata: dict[str, Any], job_uid: str) -> dict[str, Any]:
    """The headless Service that gives each pod of the indexed Job its DNS name (`<job>-<index>.<job>`),
    owned by the Job: created after it, deleted with it. Addresses are published before the pods are
    ready, since a rank looks rank 0 up while it starts."""
    name = metadata["name"]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**metadata, "ownerReferences": [owner]},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"job-name": name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }

"""Training past one node, on this machine: two worker processes stand in for the two pods of an
indexed Job. Each runs the very command the Kubernetes executor renders for a run on two nodes
(`job_manifest` for `resources.nodes: 2`), with what Kubernetes would fill in filled in by hand:
`$(JOB_COMPLETION_INDEX)` → 0 and 1, rank 0's address (`<job>-0.<job>`, the headless Service) →
127.0.0.1 and a free port, and the attempt's ConfigMap (spec.json, the strategy's accelerate config)
written to a folder that stands for its mount. The two `accelerate launch` processes meet through
torchrun's static c10d rendezvous, train over gloo on the CPU, and finish a tiny reward model.

The strategy is DDP (training/accelerate/ddp.yaml): accelerate 1.16 turns FSDP on only for
accelerator devices — on a CPU its state keeps `MULTI_CPU` (plain DDP) whatever the config says
(`test_accelerate_keeps_fsdp_off_on_a_cpu` pins that down), so FSDP and ZeRO-3 need GPUs (docs/trainer.md,
"Several nodes").
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from charter.trainer import events
from charter.trainer.executor import Launch
from charter.trainer.kubernetes import (
    CONTAINER,
    SPEC_DIR,
    JobOptions,
    job_manifest,
    run_resources,
    spec_configmap,
)
from charter.trainer.kubernetes.launcher import NODE_RANK, RENDEZVOUS_PORT, main_process_host
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.json_format import MessageToJson

from tests.support.hh import HH_DEV
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import run_spec

pytestmark = pytest.mark.integration

RUN_ID = "r-2n0de5d1571b0001"
NONCE = "0123456789abcdef0123456789abcdef"
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_commands(tmp_path: Path, spec: tp.RunSpec) -> tuple[list[list[str]], dict[str, str], Path]:
    """The two nodes' commands as the executor renders them, Kubernetes' part done by hand; the
    container's environment; the run folder."""
    runs = tmp_path / "runs"
    options = JobOptions(
        namespace="charter", image="charter-trainer:0.1.0", runs_pvc="runs", runs_mount=str(runs)
    )
    launch = Launch(run_id=RUN_ID, attempt=1, spec_json=MessageToJson(spec), resume=False, nonce=NONCE)
    job = job_manifest(launch, options, run_resources(launch.spec_json))
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 2)
    [worker] = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
    mount = tmp_path / "spec"  # the ConfigMap's volume
    mount.mkdir()
    for key, text in spec_configmap(launch, options)["data"].items():
        (mount / key).write_text(text)
    host, port = main_process_host(job["metadata"]["name"]), str(free_port())
    template = [arg.replace(SPEC_DIR, str(mount)) for arg in worker["command"]]
    assert template[:2] == ["accelerate", "launch"] and NODE_RANK in template and host in template
    template[0] = str(Path(sys.executable).parent / "accelerate")
    replace = {host: "127.0.0.1", str(RENDEZVOUS_PORT): port}
    commands = [[replace.get(arg, arg).replace(NODE_RANK, str(rank)) for arg in template] for rank in (0, 1)]
    env = {e["name"]: e["value"] for e in worker["env"] if e["name"] not in ("HOME", "TMPDIR")}
    assert env[events.NONCE_ENV] == NONCE
    return commands, env, runs / RUN_ID


def event_lines(text: str) -> list[dict[str, Any]]:
    return [e for e in map(lambda line: events.parse(line, NONCE), text.splitlines()) if e is not None]


def two_nodes(tmp_path: Path, lm: Path, strategy: int) -> tuple[list[int], list[str], list[str], Path, float]:
    """Both nodes of a tiny reward-model run with `strategy`, to their end: exit codes, stdouts,
    stderrs, the run folder, the wall time."""
    spec = run_spec(
        tp.ALGORITHM_REWARD_MODEL, lm, files=[str(HH_DEV)], name="two-nodes", max_steps=STEPS,
        per_device_train_batch_size=2, max_length=64, learning_rate=1e-3, logging_steps=1, save_steps=2,
    )  # fmt: skip
    spec.executor = tp.EXECUTOR_KUBERNETES
    spec.resources.CopyFrom(tp.Resources(nodes=2, strategy=strategy))
    commands, container_env, run_dir = node_commands(tmp_path, spec)
    started = time.monotonic()
    nodes = []
    for rank, command in enumerate(commands):
        env = {
            **os.environ, **container_env, "JOB_COMPLETION_INDEX": str(rank),  # as the Job controller sets it
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "LOGLEVEL": "INFO",  # torchrun's agent reports the rendezvous it completed
        }  # fmt: skip
        out = (tmp_path / f"node-{rank}.out").open("w")
        err = (tmp_path / f"node-{rank}.err").open("w")
        nodes.append((subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err), out, err))
    try:
        codes = [process.wait(timeout=120) for process, _, _ in nodes]
    finally:
        for process, out, err in nodes:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()
    wall = time.monotonic() - started
    outputs = [(tmp_path / f"node-{rank}.out").read_text() for rank in (0, 1)]
    errors = [(tmp_path / f"node-{rank}.err").read_text() for rank in (0, 1)]
    return codes, outputs, errors, run_dir, wall


@pytest.mark.timeout(150)
def test_two_nodes_train_one_model_over_gloo(tmp_path: Path, embedded_model: Path):
    lm = save_tiny_lm(tmp_path / "lm", embedded_model)
    codes, outputs, errors, run_dir, wall = two_nodes(tmp_path, lm, tp.STRATEGY_DDP)
    assert codes == [0, 0], "\n".join(e[-3000:] for e in errors)

    # the ranks met: torchrun's agent on each node completed one rendezvous, of two nodes, world size 2
    for rank, text in enumerate(errors):
        [block] = text.split("Rendezvous complete for workers")[1:]
        found = dict(re.findall(r"(\w+)=(\S*)$", block[:2000], re.MULTILINE))  # lines may carry a log prefix
        met = {
            k: found.get(k) for k in ("group_rank", "group_world_size", "global_ranks", "global_world_sizes")
        }
        assert met == {
            "group_rank": str(rank), "group_world_size": "2", "global_ranks": f"[{rank}]", "global_world_sizes": "[2]",
        }, block[:2000]  # fmt: skip

    # one run: rank 0 reported it, rank 1 reported nothing
    reported = event_lines(outputs[0])
    assert event_lines(outputs[1]) == []
    kinds = [e["type"] for e in reported]
    assert kinds[0] == "data" and kinds[-1] == "finished" and kinds.count("finished") == 1
    assert [e["step"] for e in reported if e["type"] == "metrics" and "loss" in e["values"]] == [1, 2, 3, 4]
    assert [e["step"] for e in reported if e["type"] == "checkpoint"] == [2, 4]
    assert reported[-1]["output_dir"] == str(run_dir / "model")

    # one set of files, written by rank 0
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    state = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and state["train_batch_size"] == 2

    # the model is whole, loads, and trained
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert model.config.num_labels == 1 and (run_dir / "model" / "tokenizer_config.json").exists()
    trained = load_file(run_dir / "model" / "model.safetensors")
    initial = load_file(lm / "model.safetensors")
    moved = [k for k, v in initial.items() if k in trained and not v.equal(trained[k])]
    assert moved, "no weight changed"
    print(f"two nodes, {STEPS} steps: {wall:.1f} s wall")


FSDP_ON_CPU = """
from accelerate import Accelerator
acc = Accelerator(cpu=True)
print(acc.state.distributed_type.value, acc.state.backend, hasattr(acc.state, "fsdp_plugin"))
"""


def test_accelerate_keeps_fsdp_off_on_a_cpu():
    """What fsdp.yaml does on this machine: the environment accelerate launch derives from it (FSDP on,
    version 2, sharded state dict) in a torchrun worker on the CPU gives plain data parallelism over
    gloo, no FSDP plugin. When this fails, accelerate shards on CPUs: train the two nodes with FSDP."""
    env = {
        **os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", FSDP_ON_CPU], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["MULTI_CPU", "gloo", "False"]

"""The accelerate configs the Kubernetes executor ships (training/accelerate/ links to them) are what
`accelerate launch` reads them as: each strategy's distributed type and settings, with the launch
command's own flags (nodes, rank, address, processes) winning over the file's placeholders."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from charter.trainer.kubernetes.launcher import ACCELERATE_CONFIGS

ROOT = Path(__file__).resolve().parents[2]


def launch_args(config: str) -> object:
    """accelerate's reading of the executor's launch flags for rank 1 of 2 nodes of 8 processes each."""
    argv = [
        "--config_file", str(ACCELERATE_CONFIGS / config), "--num_machines", "2", "--machine_rank", "1",
        "--main_process_ip", "job-0.job", "--main_process_port", "29500", "--num_processes", "16",
        "-m", "charter.app.trainer_worker",
    ]  # fmt: skip
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args


def test_training_accelerate_is_the_shipped_folder():
    assert (ROOT / "training" / "accelerate").resolve() == ACCELERATE_CONFIGS.resolve()
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == [
        "ddp.yaml",
        "fsdp.yaml",
        "zero3.yaml",
    ]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("ddp.yaml", {"multi_gpu": True, "use_fsdp": False, "use_deepspeed": False}),
        ("fsdp.yaml", {
            "use_fsdp": True, "fsdp_version": 2, "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False,
        }),
        ("zero3.yaml", {
            "use_deepspeed": True, "zero_stage": 3, "zero3_init_flag": True, "zero3_save_16bit_model": True,
            "deepspeed_multinode_launcher": "standard",  # torchrun on every pod, not pdsh over ssh
        }),
    ],
)  # fmt: skip
def test_each_strategy_reads_as_accelerate_reads_it(config, expected):
    args = launch_args(config)
    assert {key: getattr(args, key) for key in expected} == expected
    launch = (
        args.num_machines,
        args.machine_rank,
        args.main_process_ip,
        args.main_process_port,
        args.num_processes,
    )
    assert launch == (2, 1, "job-0.job", 29500, 16)  # the command's flags, not the file's placeholders
    assert (args.mixed_precision, args.rdzv_backend) == ("no", "static")  # bf16: the run's hyper-parameter

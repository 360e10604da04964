"""The example run specs under training/ load and pass the up-front check (with their data files and
reward model pointed at ones that exist)."""

from __future__ import annotations

from pathlib import Path

import pytest
from charter.api.trainer import spec_from_proto
from charter.cli.train import load_spec
from charter.core.errors import InvalidArgument
from charter.trainer.spec import check

from tests.support import ROOT
from tests.support.hh import HH_DEV

SPECS = sorted((ROOT / "training").glob("*.yaml"))


def test_there_are_example_specs():
    assert {p.stem for p in SPECS} >= {"sft", "reward-model", "dpo", "ppo", "grpo"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_spec_checks(path: Path, tmp_path: Path):
    spec = load_spec(path)
    if spec.HasField("continuous"):  # follows the label stream: no files
        assert spec.data.HasField("label_stream") and not spec.data.label_stream.HasField("to_cursor")
        assert check(spec_from_proto(spec)).continuous is not None
        return
    assert spec.data.files.paths and all(Path(p).is_absolute() for p in spec.data.files.paths)
    rows = tmp_path / "sft.jsonl"
    rows.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    spec.data.files.paths[:] = [str(rows) if spec.name.startswith("sft") else str(HH_DEV)]
    if spec.algorithm in (4, 5, 6):  # PPO, GRPO, RLOO need a reward model
        with pytest.raises(InvalidArgument, match="spec.reward_model"):
            check(spec_from_proto(spec))
        spec.reward_model = "r-0123456789abcdef"
    checked = check(spec_from_proto(spec))
    assert checked.base_model == "embedded"


@pytest.mark.parametrize("written, value", [("fsdp", "STRATEGY_FSDP"), ("ZeRO3", "STRATEGY_ZERO3"),
                                            ("STRATEGY_DDP", "STRATEGY_DDP")])  # fmt: skip
def test_a_strategy_is_written_by_its_short_name_or_the_enum_name(tmp_path: Path, written: str, value: str):
    from charter_proto.trainer.v1 import trainer_pb2 as tp

    path = tmp_path / "run.yaml"
    path.write_text((ROOT / "training" / "sft.yaml").read_text() + f"\nresources: {{nodes: 2, strategy: {written}}}\n")
    spec = load_spec(path)
    assert spec.resources.strategy == tp.Strategy.Value(value) and spec.resources.nodes == 2
    path.write_text((ROOT / "training" / "sft.yaml").read_text() + "\nresources: {strategy: sharded}\n")
    with pytest.raises(InvalidArgument, match="strategy"):
        load_spec(path)

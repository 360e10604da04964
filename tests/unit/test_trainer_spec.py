"""A run spec is checked up front: bad specs fail at once with INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import pytest
from charter.api.trainer import spec_from_proto
from charter.core.errors import InvalidArgument
from charter.trainer.spec import check
from charter_proto.review.v1 import review_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.struct_pb2 import Struct

from tests.support import SHARED_DATA

HH = str(SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz")


def spec(algorithm=tp.ALGORITHM_DPO, hyperparameters=None, **changes) -> tp.RunSpec:
    s = tp.RunSpec(
        name="unit",
        algorithm=algorithm,
        base_model="embedded",
        data=tp.DataSource(files=tp.FileSource(paths=[HH]), eval_fraction=0.1),
        seed=7,
    )
    if hyperparameters is not None:
        struct = Struct()
        struct.update(hyperparameters)
        s.hyperparameters.CopyFrom(struct)
    for key, value in changes.items():
        if isinstance(value, tp.DataSource):
            s.data.CopyFrom(value)
        else:
            setattr(s, key, value)
    return s


@pytest.mark.parametrize(
    ("algorithm", "hyperparameters", "attribute", "expected"),
    [
        (tp.ALGORITHM_SFT, {"learning_rate": 2e-5, "max_steps": 10}, "max_steps", 10),
        (
            tp.ALGORITHM_REWARD_MODEL,
            {"learning_rate": 1e-5, "center_rewards_coefficient": 0.01},
            "center_rewards_coefficient",
            0.01,
        ),
        (tp.ALGORITHM_DPO, {"beta": 0.2, "max_length": 128}, "beta", 0.2),
    ],
)
def test_good_specs_build_the_trl_config(algorithm, hyperparameters, attribute, expected):
    checked = check(spec_from_proto(spec(algorithm, hyperparameters)))
    assert getattr(checked.config, attribute) == pytest.approx(expected)
    assert checked.config.seed == 7 and checked.config.use_cpu


def test_ppo_spec_builds_charters_own_config():
    checked = check(
        spec_from_proto(
            spec(tp.ALGORITHM_PPO, {"learning_rate": 1e-5, "ppo_epochs": 2}, reward_model="embedded")
        )
    )
    assert type(checked.config).__name__ == "PPOConfig"
    assert (checked.config.ppo_epochs, checked.config.seed) == (2, 7)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"algorithm": 42}, "spec.algorithm"),
        ({"algorithm": tp.ALGORITHM_UNSPECIFIED}, "spec.algorithm"),
        ({"base_model": "/no/such/model"}, "spec.base_model"),
        ({"base_model": ""}, "spec.base_model"),
        ({"data": tp.DataSource()}, "spec.data"),
        (
            {"data": tp.DataSource(files=tp.FileSource(paths=["/no/such/file.jsonl"]))},
            "spec.data.files.paths[0]",
        ),
        (
            {"data": tp.DataSource(files=tp.FileSource(paths=[HH]), eval_fraction=1.5)},
            "spec.data.eval_fraction",
        ),
        (
            {
                "data": tp.DataSource(
                    label_stream=tp.LabelStreamSource(
                        from_cursor=review_pb2.LabelCursor(sequence=10),
                        to_cursor=review_pb2.LabelCursor(sequence=5),
                    )
                )
            },
            "spec.data.label_stream.to_cursor",
        ),
        ({"hyperparameters": {"learning_rate": 0}}, "spec.hyperparameters.learning_rate"),
        ({"hyperparameters": {"learning_rate": -1e-5}}, "spec.hyperparameters.learning_rate"),
        ({"hyperparameters": {"bogus_argument": 1}}, "spec.hyperparameters.bogus_argument"),
        ({"hyperparameters": {"output_dir": "/tmp/elsewhere"}}, "spec.hyperparameters.output_dir"),
        ({"algorithm": tp.ALGORITHM_GRPO}, "spec.reward_model"),
        (
            {
                "algorithm": tp.ALGORITHM_PPO,
                "reward_model": "embedded",
                "hyperparameters": {"clip_rang": 0.2},
            },
            "spec.hyperparameters.clip_rang",
        ),
        (
            {"algorithm": tp.ALGORITHM_PPO, "reward_model": "embedded", "hyperparameters": {"ppo_epochs": 0}},
            "spec.hyperparameters.ppo_epochs",
        ),
    ],
)
def test_bad_specs_name_the_field(changes, field):
    hyperparameters = changes.pop("hyperparameters", None)
    with pytest.raises(InvalidArgument) as err:
        check(spec_from_proto(spec(hyperparameters=hyperparameters, **changes)))
    assert err.value.field == field
    assert err.value.code == "INVALID_ARGUMENT" and str(err.value).startswith(field)

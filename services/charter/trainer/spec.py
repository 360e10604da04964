"""A training run's spec, checked before anything starts (issue 7: "a typo fails at once, not an hour
in"): the algorithm, the base model, the data source, the reward watch, a reward-model ensemble and
every hyper-parameter — the last by
actually constructing the algorithm's config object (TRL's `SFTConfig`, `RewardConfig`, `DPOConfig`,
`GRPOConfig`, `RLOOConfig`, or Charter's own `PPOConfig`), so an unknown or ill-typed argument is an
INVALID_ARGUMENT naming `spec.hyperparameters.<name>` (as is a DPOConfig setting that Charter's
soft-label DPO loss does not implement: `charter.trainer.dpo.check_config`). The spec is
`charter.trainer.runs.RunSpec` (`charter.api.trainer.spec_from_proto` converts the proto's).
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from charter.core.errors import InvalidArgument
from charter.inference.models import is_model_folder
from charter.trainer.admission import Limits, admit, check_disk_budget, deny_hyperparameters
from charter.trainer.runs import (
    ALGORITHMS,
    CONTINUOUS_ALGORITHMS,
    ENSEMBLE_VARY,
    ContinuousTraining,
    DataSource,
    RewardModelEnsemble,
    RewardWatch,
    RunSpec,
)
from charter.trainer.scoring import ENSEMBLE_FILE

__all__ = ["ALGORITHMS", "CheckedSpec", "check", "trl_config"]
_TRL_CONFIGS = {
    "sft": "SFTConfig",
    "reward-model": "RewardConfig",
    "dpo": "DPOConfig",
    "grpo": "GRPOConfig",
    "rloo": "RLOOConfig",
}
_NEEDS_REWARD_MODEL = ("ppo", "grpo", "rloo")
# set by Charter from the spec, never by hyper-parameters
_RESERVED = {"output_dir", "seed", "report_to", "use_cpu", "logging_dir", "resume_from_checkpoint"}
_UNKNOWN_ARG = re.compile(r"unexpected keyword argument '([^']+)'")


@dataclass(frozen=True)
class CheckedSpec:
    algorithm: str
    base_model: str
    """"embedded" or a model folder / .gguf path that exists."""
    hyperparameters: dict[str, Any]
    config: Any
    """The constructed config object (TRL's or Charter's PPOConfig)."""
    watch: RewardWatch | None = None
    """The reward-hacking watch with its defaults filled in (`WATCH_DEFAULTS`); None: no watch."""
    ensemble: RewardModelEnsemble | None = None
    """A reward-model ensemble with its default filled in (`vary` "seed"); None: one reward model."""
    continuous: ContinuousTraining | None = None
    """A continuous run's rounds; None: one bounded run."""


ENSEMBLE_SIZES = (2, 16)
"""The fewest and the most members a reward-model ensemble may have."""

WATCH_DEFAULTS = {"probe_size": 32, "patience": 3}
"""What 0 means for these `RewardWatch` fields (`max_new_tokens` 0: the run's completion length)."""


def _model_source(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(
            f"{field}: set a model ('embedded', a model folder or a .gguf file)", field=field
        )
    if value == "embedded":
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise InvalidArgument(f"{field}: model path {value} does not exist", field=field, value=value)
    if not (is_model_folder(path) or (path.is_file() and path.suffix == ".gguf")):
        raise InvalidArgument(
            f"{field}: {value} is not a model (a folder with config.json or a .gguf file)",
            field=field,
            value=value,
        )
    return value


def _data(source: DataSource) -> None:
    kind = source.kind
    if kind is None:
        raise InvalidArgument(
            "spec.data: set a data source (label_stream from the review service, or files)", field="spec.data"
        )
    if not 0.0 <= source.eval_fraction < 1.0:
        raise InvalidArgument("spec.data.eval_fraction: must lie in [0, 1)", field="spec.data.eval_fraction")
    if kind == "files":
        assert source.files is not None
        if not source.files.paths:
            raise InvalidArgument(
                "spec.data.files.paths: name at least one file", field="spec.data.files.paths"
            )
        for i, p in enumerate(source.files.paths):
            if not Path(p).expanduser().exists():
                field = f"spec.data.files.paths[{i}]"
                raise InvalidArgument(f"{field}: {p} does not exist", field=field, value=p)
    else:
        stream = source.label_stream
        assert stream is not None
        if stream.to_cursor is not None and stream.to_cursor < stream.from_cursor:
            raise InvalidArgument(
                "spec.data.label_stream.to_cursor: before from_cursor",
                field="spec.data.label_stream.to_cursor",
            )


def _watch(spec: RunSpec, config: Any) -> RewardWatch | None:
    """The watch checked, with its defaults filled in."""
    watch = spec.watch
    if watch is None:
        return None
    if spec.algorithm not in _NEEDS_REWARD_MODEL:
        raise InvalidArgument(
            f"spec.watch: only PPO, GRPO and RLOO runs have a reward watch, not {spec.algorithm}",
            field="spec.watch",
        )
    if watch.every_steps < 1:
        raise InvalidArgument(
            "spec.watch.every_steps: how often to check (in steps) must be >= 1",
            field="spec.watch.every_steps",
            value=watch.every_steps,
        )
    if not (math.isfinite(watch.min_delta) and watch.min_delta >= 0):
        raise InvalidArgument(
            f"spec.watch.min_delta: must be a number >= 0 ({watch.min_delta=})",
            field="spec.watch.min_delta",
            value=watch.min_delta,
        )
    if watch.probe is not None:
        if not watch.probe.paths:
            raise InvalidArgument(
                "spec.watch.probe.paths: name at least one prompt file (or leave probe unset)",
                field="spec.watch.probe.paths",
            )
        for i, p in enumerate(watch.probe.paths):
            if not Path(p).expanduser().exists():
                field = f"spec.watch.probe.paths[{i}]"
                raise InvalidArgument(f"{field}: {p} does not exist", field=field, value=p)
    if spec.reward_model and (Path(spec.reward_model).expanduser() / ENSEMBLE_FILE).exists():
        raise InvalidArgument(
            f"spec.watch: the reward watch scores the proxy with one reward model, and {spec.reward_model} "
            "is an ensemble folder; name one of its members as reward_model, or leave the watch out",
            field="spec.watch",
        )
    if watch.gold is None:
        raise InvalidArgument(
            "spec.watch.gold: name a gold scorer: gold_reward_model (a run id or a model folder) or "
            "gold_judge (address, constitution_id)",
            field="spec.watch.gold",
        )
    if watch.gold_reward_model is not None:
        if not watch.gold_reward_model:
            field = "spec.watch.gold_reward_model"
            raise InvalidArgument(f"{field}: a reward-model run id or a model folder", field=field)
        if watch.gold_reward_model == spec.reward_model:
            field = "spec.watch.gold_reward_model"
            raise InvalidArgument(
                f"{field}: the run's own reward_model is the proxy; gold must be another scorer",
                field=field,
                value=watch.gold_reward_model,
            )
    if watch.gold_judge is not None:
        for name in ("address", "constitution_id"):
            if not getattr(watch.gold_judge, name):
                field = f"spec.watch.gold_judge.{name}"
                raise InvalidArgument(f"{field}: required for the judge as gold scorer", field=field)
    length = getattr(config, "max_new_tokens", None) or getattr(config, "max_completion_length", None) or 64
    return replace(
        watch,
        probe_size=watch.probe_size or WATCH_DEFAULTS["probe_size"],
        patience=watch.patience or WATCH_DEFAULTS["patience"],
        max_new_tokens=watch.max_new_tokens or length,
    )


def _ensemble(spec: RunSpec) -> RewardModelEnsemble | None:
    """The ensemble section checked, with its default filled in."""
    ensemble = spec.ensemble
    if ensemble is None:
        return None
    if spec.algorithm != "reward-model":
        raise InvalidArgument(
            f"spec.ensemble: only reward-model runs train an ensemble, not {spec.algorithm}",
            field="spec.ensemble",
        )
    low, high = ENSEMBLE_SIZES
    if not low <= ensemble.size <= high:
        raise InvalidArgument(
            f"spec.ensemble.size: an ensemble has {low} to {high} members ({ensemble.size=})",
            field="spec.ensemble.size",
            value=ensemble.size,
        )
    vary = ensemble.vary or "seed"
    if vary not in ENSEMBLE_VARY:
        raise InvalidArgument(
            f"spec.ensemble.vary: unknown value {ensemble.vary!r}; use one of {', '.join(ENSEMBLE_VARY)}",
            field="spec.ensemble.vary",
            value=ensemble.vary,
        )
    fraction = ensemble.subset_fraction
    if vary == "subset" and not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise InvalidArgument(
            f"spec.ensemble.subset_fraction: the share of the training rows each member samples must lie "
            f"in (0, 1] ({fraction=})",
            field="spec.ensemble.subset_fraction",
            value=fraction,
        )
    if vary == "seed" and fraction != 0:
        raise InvalidArgument(
            f"spec.ensemble.subset_fraction: only with vary: subset (members that vary by seed train on "
            f"every row; {fraction=})",
            field="spec.ensemble.subset_fraction",
            value=fraction,
        )
    return replace(ensemble, vary=vary)


def _continuous(spec: RunSpec) -> ContinuousTraining | None:
    """The continuous section checked: DPO or reward-model runs on an open label stream, one round
    trigger at least."""
    continuous = spec.continuous
    if continuous is None:
        return None
    if spec.algorithm not in CONTINUOUS_ALGORITHMS:
        raise InvalidArgument(
            f"spec.continuous: only {' and '.join(CONTINUOUS_ALGORITHMS)} runs train continuously, not "
            f"{spec.algorithm} (PPO, GRPO and RLOO can take a continuous reward-model run's latest round "
            "as reward_model: ID@latest)",
            field="spec.continuous",
        )
    stream = spec.data.label_stream
    if stream is None:
        raise InvalidArgument(
            "spec.data: a continuous run follows the review service's label stream; set label_stream",
            field="spec.data",
        )
    if stream.to_cursor is not None:
        raise InvalidArgument(
            "spec.data.label_stream.to_cursor: a continuous run has no end cursor (stop it with CancelRun "
            "or continuous.max_rounds)",
            field="spec.data.label_stream.to_cursor",
            value=stream.to_cursor,
        )
    if spec.ensemble is not None:
        raise InvalidArgument(
            "spec.ensemble: a continuous run trains one reward model per round, not an ensemble",
            field="spec.ensemble",
        )
    if spec.resources.processes > 1 or spec.resources.gpus > 1:  # each process would close its own rounds
        raise InvalidArgument(
            "spec.resources.processes: a continuous run trains in one process on one GPU at most "
            f"({spec.resources.processes=}, {spec.resources.gpus=})",
            field="spec.resources.processes",
        )
    seconds = continuous.round_seconds
    if not (math.isfinite(seconds) and seconds >= 0):
        raise InvalidArgument(
            f"spec.continuous.round_seconds: must be a number >= 0 ({seconds=})",
            field="spec.continuous.round_seconds",
            value=seconds,
        )
    if continuous.round_labels <= 0 and seconds == 0:
        raise InvalidArgument(
            "spec.continuous.round_labels: set round_labels, round_seconds or both (when a round closes)",
            field="spec.continuous.round_labels",
        )
    return continuous


_TRL_IMPORT = threading.Lock()


def _trl_class(name: str) -> Any:
    """`trl.<name>`, imported under a lock: TRL's lazy module is not thread-safe, and concurrent
    StartRun checks (threads of one service) importing it at once saw `module 'trl' has no attribute
    'RewardConfig'` (INTERNAL) on a fresh service."""
    with _TRL_IMPORT:
        import trl

        return getattr(trl, name)


def trl_config(
    algorithm: str, hyperparameters: dict[str, Any], *, output_dir: str, seed: int, use_cpu: bool
) -> Any:
    """The algorithm's config object built from the spec's hyper-parameters (raises InvalidArgument)."""
    hyperparameters = deny_hyperparameters(hyperparameters)
    for name in hyperparameters:
        if name in _RESERVED:
            field = f"spec.hyperparameters.{name}"
            raise InvalidArgument(
                f"{field}: set by Charter from the spec, not a hyper-parameter", field=field
            )
    lr = hyperparameters.get("learning_rate")
    if lr is not None and (not isinstance(lr, int | float) or lr <= 0):
        field = "spec.hyperparameters.learning_rate"
        raise InvalidArgument(f"{field}: must be a number > 0", field=field, value=lr)
    if algorithm == "ppo":
        from charter.trainer.ppo import PPOConfig

        return PPOConfig.from_mapping({"seed": seed, **hyperparameters}, prefix="spec.hyperparameters")
    # Charter's own setting (the worker reads it from the spec), not TRL's: GRPO/RLOO sample on a generator
    generator = hyperparameters.pop("rollout_generator", "") if algorithm in ("grpo", "rloo") else ""
    if not isinstance(generator, str):
        field = "spec.hyperparameters.rollout_generator"
        raise InvalidArgument(f"{field}: a generator's host:port", field=field, value=generator)
    cls = _trl_class(_TRL_CONFIGS[algorithm])
    fixed: dict[str, Any] = {"output_dir": output_dir, "seed": seed, "report_to": [], "use_cpu": use_cpu}
    if use_cpu:  # TRL defaults to bf16 mixed precision, which needs a GPU
        fixed["bf16"] = hyperparameters.get("bf16", False)
    try:
        config = cls(**{**hyperparameters, **fixed})
    except TypeError as err:
        match = _UNKNOWN_ARG.search(str(err))
        name = match.group(1) if match else "?"
        field = f"spec.hyperparameters.{name}"
        raise InvalidArgument(
            f"{field}: not an argument of TRL's {cls.__name__}", field=field, value=hyperparameters.get(name)
        ) from None
    except ValueError as err:
        raise InvalidArgument(
            f"spec.hyperparameters: {str(err).splitlines()[0]}", field="spec.hyperparameters"
        ) from None
    if generator.strip():
        from charter.trainer.online_sampling import check_config

        check_config(config)  # what the generator cannot do is refused now, not at the first rollout
    return config


def check(spec: RunSpec, *, use_cpu: bool = True, limits: Limits | None = None) -> CheckedSpec:
    """Validate everything in `spec` that can be checked without training; raises InvalidArgument.
    With `limits` (the trainer service's), also what a caller may ask of the service
    (`charter.trainer.admission`): paths under the allowed roots — checked before anything else
    touches them — addresses, resources and the checkpoints' disk budget."""
    if not spec.name.strip():
        raise InvalidArgument("spec.name: give the run a name", field="spec.name")
    algorithm = spec.algorithm
    if algorithm not in ALGORITHMS:
        names = ", ".join(ALGORITHMS)
        raise InvalidArgument(
            f"spec.algorithm: unknown algorithm {spec.algorithm!r}; use one of {names}",
            field="spec.algorithm",
            value=spec.algorithm,
        )
    if limits is not None:
        admit(spec, limits)
    base = _model_source(spec.base_model, "spec.base_model")
    _data(spec.data)
    continuous = _continuous(spec)
    if algorithm in _NEEDS_REWARD_MODEL and not spec.reward_model:
        raise InvalidArgument(
            f"spec.reward_model: {algorithm} needs a reward model (a run id or a model path)",
            field="spec.reward_model",
        )
    hyperparameters = dict(spec.hyperparameters or {})
    # JSON (protobuf Struct) numbers are floats: give integral values back their int type (TRL checks types)
    hyperparameters = {
        k: int(v) if isinstance(v, float) and v.is_integer() and k != "learning_rate" else v
        for k, v in hyperparameters.items()
    }
    with tempfile.TemporaryDirectory(prefix="charter-spec-") as tmp:
        config = trl_config(algorithm, hyperparameters, output_dir=tmp, seed=spec.seed, use_cpu=use_cpu)
    if algorithm == "dpo":  # the soft-label loss implements TRL's sigmoid loss only
        from charter.trainer.dpo import check_config

        check_config(config)
    if limits is not None:
        check_disk_budget(spec, config, limits)
    return CheckedSpec(
        algorithm, base, hyperparameters, config, _watch(spec, config), _ensemble(spec), continuous
    )

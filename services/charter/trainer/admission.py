"""What a caller's run spec may ask of the trainer service (issue 18): the spec names files, addresses,
hyper-parameters and resources, and the service acts on them with its own rights — it reads the files,
sends its review/judge token to the addresses, starts processes and fills disks. `Limits` (from
`trainer.*` settings) bounds each; `check` (`charter.trainer.spec.check`) applies them before anything
is recorded or started, each refusal an INVALID_ARGUMENT naming the field:

- paths (`base_model`, `reward_model`, data and probe files, `deepspeed` / `fsdp_config` /
  `accelerator_config` / `chat_template_path`) must resolve, symlinks followed, under
  `trainer.allowed_roots`; a path outside the roots and a missing one inside them get the same
  message, so the service's filesystem cannot be probed through error texts;
- `data.label_stream.address` is `trainer.review_address` or one of `trainer.review_addresses`;
  `watch.gold_judge.address` one of `trainer.judge_addresses` and a PPO, GRPO or RLOO run's
  `hyperparameters.rollout_generator` one of `trainer.generator_addresses` when set — compared as the
  places dialled (`charter.core.targets.within`: `dns:///judge:50051` is `judge:50051`; an address
  list passes only when each of its addresses is allowed);
- hyper-parameters that publish or report elsewhere (`push_to_hub`, `hub_*`, `report_to` other than
  none, trackio, a remote vLLM server, remote code) are refused (`deny_hyperparameters`);
- resources are capped (`max_gpus`, `max_processes`, `max_cpu`, `max_memory_gib`, `max_nodes`;
  several nodes and a strategy other than ddp only with the Kubernetes executor) and the
  checkpoints' estimated size must fit `checkpoint_budget_gib` (`check_disk_budget`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.core import targets
from charter.core.errors import InvalidArgument
from charter.core.settings import TrainerSettings
from charter.inference.models import default_cache_dir
from charter.trainer.runs import STRATEGIES, RunSpec

__all__ = ["Limits", "check_disk_budget", "deny_hyperparameters", "admit", "review_address"]

PATH_HYPERPARAMETERS = ("deepspeed", "fsdp_config", "accelerator_config", "chat_template_path")
"""Hyper-parameters that name a file (or hold an inline config whose paths are checked too)."""
_DENIED_PREFIXES = ("push_to_hub", "hub_", "trackio_", "vllm_server_")
_DENIED = {"log_completions_hub_repo", "trust_remote_code"}
_DENIED_KWARGS = {"trust_remote_code", "token", "use_auth_token", "cache_dir"}
"""Keys refused inside any `*_kwargs` hyper-parameter (model loading options that reach outside)."""
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE])?")
_FACTORS = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_FACTORS.update({f"{p}i": 1024.0 ** (i + 1) for i, p in enumerate("KMGTPE")})
GIB = 1024**3
EMBEDDED_BYTES = 135_000_000 * 4
"""The embedded model's weights as the trainer holds them (135M float32 parameters)."""
CHECKPOINT_FACTOR = 3
"""A checkpoint ≈ the weights and Adam's two moments: three times the weights."""


@dataclass(frozen=True)
class Limits:
    roots: tuple[Path, ...]
    review_address: str = ""
    review_addresses: tuple[str, ...] = ()
    judge_addresses: tuple[str, ...] = ()
    generator_addresses: tuple[str, ...] = ()
    max_gpus: int = 8
    max_processes: int = 8
    max_nodes: int = 1
    executor: str = "local"
    max_cpu: float = 64.0
    max_memory_gib: float = 512.0
    checkpoint_budget_gib: float = 200.0

    @classmethod
    def from_settings(cls, s: TrainerSettings) -> Limits:
        if s.allowed_roots is not None:
            roots = [Path(r) for r in s.allowed_roots]
        else:  # today's local use: the project folder, the runs, the model cache
            runs = Path(s.runs_dir).expanduser().resolve()
            roots = [Path.cwd(), runs, runs.parent, default_cache_dir()]
            if s.executor == "kubernetes":  # the runs PVC, where the service and the workers share folders
                roots.append(Path(s.kubernetes.runs_mount))
        resolved = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))
        return cls(
            roots=resolved, review_address=s.review_address, review_addresses=tuple(s.review_addresses),
            judge_addresses=tuple(s.judge_addresses), generator_addresses=tuple(s.generator_addresses),
            max_gpus=s.max_gpus, max_processes=s.max_processes,
            max_nodes=s.max_nodes, executor=s.executor,
            max_cpu=s.max_cpu, max_memory_gib=s.max_memory_gib, checkpoint_budget_gib=s.checkpoint_budget_gib,
        )  # fmt: skip


def under_roots(value: str, field: str, roots: tuple[Path, ...]) -> Path:
    """`value` resolved (symlinks followed); the same refusal for a path outside the roots and a
    missing one inside them."""
    try:
        path = Path(value).expanduser().resolve()
        inside = any(path.is_relative_to(root) for root in roots)
        found = inside and path.exists()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        found = False
    if not found:
        raise InvalidArgument(
            f"{field}: {value} was not found under the trainer's allowed roots (trainer.allowed_roots)",
            field=field,
        )
    return path


def _is_path(value: str) -> bool:
    return value not in ("", "embedded") and not value.startswith("r-")


def _spec_paths(spec: RunSpec) -> Iterator[tuple[str, str]]:
    """(field, path) for every path the spec names."""
    if _is_path(spec.base_model):
        yield "spec.base_model", spec.base_model
    if _is_path(spec.reward_model):
        yield "spec.reward_model", spec.reward_model
    if spec.data.files is not None:
        for i, p in enumerate(spec.data.files.paths):
            yield f"spec.data.files.paths[{i}]", p
    watch = spec.watch
    if watch is not None:
        if watch.gold_reward_model and _is_path(watch.gold_reward_model):
            yield "spec.watch.gold_reward_model", watch.gold_reward_model
        if watch.probe is not None:
            for i, p in enumerate(watch.probe.paths):
                yield f"spec.watch.probe.paths[{i}]", p
    for name in PATH_HYPERPARAMETERS:
        value = (spec.hyperparameters or {}).get(name)
        field = f"spec.hyperparameters.{name}"
        if isinstance(value, str) and value:
            yield field, value
        elif isinstance(value, dict | list):
            for text in _strings(value):
                if os.sep in text or text.startswith("~"):
                    yield field, text


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def review_address(spec: RunSpec, limits: Limits) -> str:
    """The review service a label-stream run reads from: the settings' own, or an allowed one the spec
    names — never another (the worker sends the review token to it)."""
    field = "spec.data.label_stream.address"
    stream = spec.data.label_stream
    assert stream is not None
    wanted = stream.address
    if not wanted:
        if not limits.review_address:
            raise InvalidArgument(
                f"{field}: this trainer has no review service (set trainer.review_address)", field=field
            )
        return limits.review_address
    if not targets.within(wanted, [limits.review_address, *limits.review_addresses]):
        raise InvalidArgument(
            f"{field}: {wanted} is not a review service this trainer reads from; leave it empty for "
            "trainer.review_address, or have the operator add it to trainer.review_addresses",
            field=field,
        )
    return wanted


def _quantity(value: str, field: str) -> float:
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise InvalidArgument(
            f"{field}={value!r} is not a Kubernetes quantity (e.g. '8', '500m', '32Gi')", field=field
        )
    return float(match.group(1)) * _FACTORS[match.group(2) or ""]


def _resources(spec: RunSpec, limits: Limits) -> None:
    r = spec.resources
    for name, asked, most in (
        ("gpus", r.gpus, limits.max_gpus),
        ("processes", r.processes, limits.max_processes),
    ):
        if not 0 <= asked <= most:
            field = f"spec.resources.{name}"
            raise InvalidArgument(f"{field}: {asked} is over this trainer's limit of {most}", field=field)
    _distribution(spec, limits)
    if r.cpu and _quantity(r.cpu, "spec.resources.cpu") > limits.max_cpu:
        field = "spec.resources.cpu"
        raise InvalidArgument(
            f"{field}: {r.cpu} is over this trainer's limit of {limits.max_cpu:g} cores", field=field
        )
    if r.memory and _quantity(r.memory, "spec.resources.memory") > limits.max_memory_gib * GIB:
        field = "spec.resources.memory"
        raise InvalidArgument(
            f"{field}: {r.memory} is over this trainer's limit of {limits.max_memory_gib:g}Gi", field=field
        )


def _distribution(spec: RunSpec, limits: Limits) -> None:
    """Several nodes and the sharding strategies: only where the executor can give them."""
    r, field = spec.resources, "spec.resources.nodes"
    if r.nodes > 1 and limits.executor != "kubernetes":
        raise InvalidArgument(
            f"{field}: {r.nodes} nodes need the Kubernetes executor; the {limits.executor} executor "
            "trains on this machine only",
            field=field,
        )
    if r.nodes > limits.max_nodes:
        raise InvalidArgument(
            f"{field}: {r.nodes} is over this trainer's limit of {limits.max_nodes} (trainer.max_nodes)",
            field=field,
        )
    if r.nodes > 1 and spec.continuous is not None:  # each node would close its own rounds
        raise InvalidArgument(f"{field}: a continuous run trains on one node", field=field)
    stream = spec.data.label_stream
    if r.nodes > 1 and stream is not None and stream.to_cursor is None:  # every rank reads the stream
        raise InvalidArgument(
            f"{field}: the nodes read the label stream each; give spec.data.label_stream.to_cursor so "
            "that they read the same labels",
            field=field,
        )
    field = "spec.resources.strategy"
    if r.strategy and r.strategy not in STRATEGIES:
        raise InvalidArgument(
            f"{field}: unknown strategy {r.strategy!r}; use one of {', '.join(STRATEGIES)}", field=field
        )
    if r.strategy not in ("", "ddp") and limits.executor != "kubernetes":
        raise InvalidArgument(
            f"{field}: {r.strategy} shares the model across the processes of a Kubernetes worker; the "
            f"{limits.executor} executor runs one process",
            field=field,
        )
    if r.strategy in ("fsdp", "zero3") and (
        spec.algorithm == "ppo" or spec.watch or spec.ensemble or spec.continuous or rollout_generator(spec)
    ):  # they read, copy or save the weights outside TRL's trainer, as whole tensors
        raise InvalidArgument(
            f"{field}: {r.strategy} shards the weights of TRL's trainers (sft, reward-model, dpo, grpo, "
            "rloo); Charter's PPO, the reward-hacking watch, reward-model ensembles, continuous runs and "
            "rollouts on a generator (rollout_generator) train with ddp",
            field=field,
        )
    # the strategy's accelerate config decides how the model is sharded: TRL's own switches would
    # fight it
    clash = sorted({"fsdp", "fsdp_config", "deepspeed"} & set(spec.hyperparameters or {}))
    if r.strategy not in ("", "ddp") and clash:
        field = f"spec.hyperparameters.{clash[0]}"
        raise InvalidArgument(
            f"{field}: set by spec.resources.strategy={r.strategy} (training/accelerate/"
            f"{r.strategy}.yaml); leave it out",
            field=field,
        )


def admit(spec: RunSpec, limits: Limits) -> None:
    """Paths under the roots, addresses allowed, resources within the caps (raises InvalidArgument)."""
    for field, value in _spec_paths(spec):
        under_roots(value, field, limits.roots)
    if spec.data.label_stream is not None:
        review_address(spec, limits)
    judge = spec.watch.gold_judge if spec.watch is not None else None
    allowed = limits.judge_addresses
    if judge is not None and allowed and not targets.within(judge.address, allowed):
        field = "spec.watch.gold_judge.address"
        raise InvalidArgument(
            f"{field}: {judge.address} is not a judge this trainer may call (trainer.judge_addresses)",
            field=field,
        )
    generator = rollout_generator(spec)
    if generator and limits.generator_addresses and not targets.within(generator, limits.generator_addresses):
        field = "spec.hyperparameters.rollout_generator"
        raise InvalidArgument(
            f"{field}: {generator} is not a generator this trainer may push weights to "
            "(trainer.generator_addresses)",
            field=field,
        )
    _resources(spec, limits)


def rollout_generator(spec: RunSpec) -> str:
    """The generator a PPO, GRPO or RLOO run samples its rollouts from (`hyperparameters.rollout_generator`),
    or ""."""
    return generator_of(spec.algorithm, spec.hyperparameters or {})


def generator_of(algorithm: str, hyperparameters: Mapping[str, Any]) -> str:
    """`rollout_generator` from an algorithm and its hyper-parameters (the worker holds no RunSpec)."""
    value = hyperparameters.get("rollout_generator") if algorithm in ("ppo", "grpo", "rloo") else None
    return value.strip() if isinstance(value, str) else ""


def deny_hyperparameters(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters without a harmless `report_to: none`; raises InvalidArgument for one that
    publishes, reports or loads code from elsewhere."""
    out = dict(hyperparameters)
    for name, value in hyperparameters.items():
        field = f"spec.hyperparameters.{name}"
        if name == "report_to":
            if value in ("none", [], ["none"], None):
                del out[name]
                continue
            raise InvalidArgument(
                f"{field}: Charter reports a run's metrics through WatchRun; report_to may only be none",
                field=field,
            )
        if name in _DENIED or name.startswith(_DENIED_PREFIXES):
            raise InvalidArgument(
                f"{field}: not allowed in a trainer service run (it publishes, reports or loads code "
                "outside the service)",
                field=field,
            )
        if name.endswith("_kwargs") and isinstance(value, dict):
            for key in value:
                if key in _DENIED_KWARGS:
                    raise InvalidArgument(f"{field}.{key}: not allowed in a trainer service run", field=field)
    return out


def model_bytes(base_model: str) -> int:
    """The weights' size on disk (safetensors, bin, gguf files), or the embedded model's."""
    if base_model in ("", "embedded"):
        return EMBEDDED_BYTES
    path = Path(base_model).expanduser()
    files = (
        [path]
        if path.is_file()
        else [p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
    )
    return sum(p.stat().st_size for p in files if p.is_file()) or EMBEDDED_BYTES


def check_disk_budget(spec: RunSpec, config: Any, limits: Limits) -> None:
    """The run's checkpoints must fit `checkpoint_budget_gib`: kept checkpoints × 3 × the weights.
    A run of unfixed length (no max_steps) must bound its checkpoints with save_total_limit."""
    strategy = getattr(config, "save_strategy", "steps")  # TRL's is an enum of strings
    strategy = str(getattr(strategy, "value", strategy))
    if strategy == "no":
        return
    each = (
        CHECKPOINT_FACTOR * model_bytes(spec.base_model) * max(spec.ensemble.size if spec.ensemble else 1, 1)
    )
    allowed = int(limits.checkpoint_budget_gib * GIB // each)
    limit = getattr(config, "save_total_limit", None) or 0
    steps = getattr(config, "max_steps", None) or getattr(config, "total_steps", None) or 0
    save_steps = getattr(config, "save_steps", 500) or 500
    if limit:
        kept = limit
    elif strategy == "epoch":
        kept = math.ceil(getattr(config, "num_train_epochs", 1))
    elif steps > 0:
        kept = math.ceil(1 / save_steps) if save_steps < 1 else math.ceil(steps / save_steps)
    else:
        field = "spec.hyperparameters.save_total_limit"
        raise InvalidArgument(
            f"{field}: the run's length is not fixed (no max_steps), so bound its checkpoints: "
            f"save_total_limit of at most {allowed} (trainer.checkpoint_budget_gib="
            f"{limits.checkpoint_budget_gib:g})",
            field=field,
        )
    if kept > allowed:
        field = "spec.hyperparameters.save_total_limit" if limit else "spec.hyperparameters.save_steps"
        raise InvalidArgument(
            f"{field}: {kept} checkpoints of about {each / GIB:.1f} GiB each exceed this trainer's disk "
            f"budget ({limits.checkpoint_budget_gib:g} GiB: at most {allowed}); raise save_steps or set "
            "save_total_limit",
            field=field,
        )

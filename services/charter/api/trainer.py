"""The trainer's protobuf <-> domain conversions: `charter.trainer.v1` messages to and from the plain
dataclasses of `charter.trainer.runs`, the enum <-> name tables, and `PROTO_CODEC`, the run store's
payload format (the serialised `Run` and `RunEvent` messages).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from charter_proto.review.v1 import review_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.json_format import MessageToDict, MessageToJson
from google.protobuf.struct_pb2 import Struct

from charter.api import common
from charter.core.errors import InvalidArgument
from charter.trainer.runs import (
    CheckpointEvent,
    ContinuousTraining,
    DataEvent,
    DataSource,
    EventKind,
    FileSource,
    JudgeGold,
    LabelFilter,
    LabelStreamSource,
    LogEvent,
    MetricsEvent,
    Resources,
    RewardModelEnsemble,
    RewardWatch,
    Round,
    Run,
    RunEvent,
    RunSpec,
    RunState,
    StateEvent,
)

if TYPE_CHECKING:
    from charter.trainer.store import RunStore

ALGORITHM_NAMES = {
    tp.ALGORITHM_SFT: "sft",
    tp.ALGORITHM_REWARD_MODEL: "reward-model",
    tp.ALGORITHM_DPO: "dpo",
    tp.ALGORITHM_PPO: "ppo",
    tp.ALGORITHM_GRPO: "grpo",
    tp.ALGORITHM_RLOO: "rloo",
}
"""Algorithm enum value -> the domain's name."""
ALGORITHM_VALUES = {name: value for value, name in ALGORITHM_NAMES.items()}
EXECUTOR_NAMES = {tp.EXECUTOR_LOCAL: "local", tp.EXECUTOR_KUBERNETES: "kubernetes"}
EXECUTOR_VALUES = {name: value for value, name in EXECUTOR_NAMES.items()}
STRATEGY_NAMES = {tp.STRATEGY_DDP: "ddp", tp.STRATEGY_FSDP: "fsdp", tp.STRATEGY_ZERO3: "zero3"}
"""Strategy value -> the domain's name (charter.trainer.runs.STRATEGIES); UNSPECIFIED is ""."""
STRATEGY_VALUES = {name: value for value, name in STRATEGY_NAMES.items()}
ENSEMBLE_VARY_NAMES = {tp.ENSEMBLE_VARY_SEED: "seed", tp.ENSEMBLE_VARY_SUBSET: "subset"}
"""EnsembleVary value -> the domain's name."""
ENSEMBLE_VARY_VALUES = {name: value for value, name in ENSEMBLE_VARY_NAMES.items()}


# -- enums ----------------------------------------------------------------------------------------------


def algorithm_name(value: tp.Algorithm.ValueType) -> str:
    """The domain's name of an Algorithm value; "" for UNSPECIFIED, the number as text for an unknown
    one (the spec's check rejects both)."""
    return ALGORITHM_NAMES.get(value, str(value) if value else "")


def algorithm_value(name: str) -> tp.Algorithm.ValueType:
    if name in ALGORITHM_VALUES:
        return ALGORITHM_VALUES[name]
    return cast("tp.Algorithm.ValueType", int(name)) if name.isdigit() else tp.ALGORITHM_UNSPECIFIED


def state(value: int) -> RunState:
    """A RunState enum value as the domain's `RunState` (an unknown number is UNSPECIFIED)."""
    try:
        return RunState(value)
    except ValueError:
        return RunState.UNSPECIFIED


def state_label(value: int) -> str:
    """pending, running, succeeded, failed, cancelled (or unspecified)."""
    return state(value).label


def _source_names(values: Iterable[review_pb2.LabelSource.ValueType]) -> list[str]:
    known = review_pb2.LabelSource.values()
    return [review_pb2.LabelSource.Name(v) if v in known else str(v) for v in values]


def _source_values(names: Iterable[str]) -> list[review_pb2.LabelSource.ValueType]:
    known = review_pb2.LabelSource.keys()
    return [
        review_pb2.LabelSource.Value(n) if n in known else cast("review_pb2.LabelSource.ValueType", int(n))
        for n in names
    ]


# -- spec -----------------------------------------------------------------------------------------------


def spec_from_proto(spec: tp.RunSpec) -> RunSpec:
    data = spec.data
    kind = data.WhichOneof("source")
    stream = files = None
    if kind == "label_stream":
        s = data.label_stream
        flt = None
        if s.HasField("filter"):
            f = s.filter
            flt = LabelFilter(
                constitution_id=f.constitution_id,
                principle_ids=list(f.principle_ids),
                sources=_source_names(f.sources),
                min_confidence=f.min_confidence if f.HasField("min_confidence") else None,
            )
        stream = LabelStreamSource(
            address=s.address,
            from_cursor=s.from_cursor.sequence,
            to_cursor=s.to_cursor.sequence if s.HasField("to_cursor") else None,
            filter=flt,
        )
    elif kind == "files":
        files = FileSource(paths=list(data.files.paths))
    r = spec.resources
    return RunSpec(
        name=spec.name,
        algorithm=algorithm_name(spec.algorithm),
        base_model=spec.base_model,
        data=DataSource(label_stream=stream, files=files, eval_fraction=data.eval_fraction),
        reward_model=spec.reward_model,
        hyperparameters=hyperparameters_from_proto(spec.hyperparameters)
        if spec.HasField("hyperparameters")
        else None,
        executor=EXECUTOR_NAMES.get(spec.executor, ""),
        resources=Resources(
            gpus=r.gpus,
            processes=r.processes,
            cpu=r.cpu,
            memory=r.memory,
            nodes=r.nodes,
            # an unknown value stays visible as its number: admission refuses it
            strategy=STRATEGY_NAMES.get(r.strategy, str(r.strategy) if r.strategy else ""),
        ),
        seed=spec.seed,
        watch=watch_from_proto(spec.watch) if spec.HasField("watch") else None,
        ensemble=ensemble_from_proto(spec.ensemble) if spec.HasField("ensemble") else None,
        continuous=continuous_from_proto(spec.continuous) if spec.HasField("continuous") else None,
    )


def hyperparameters_from_proto(values: Struct) -> dict[str, Any]:
    """The hyper-parameters as a plain dict; a NaN or an infinity anywhere in them (JSON has neither)
    is an INVALID_ARGUMENT naming where it is."""
    _check_finite(values, "spec.hyperparameters")
    return MessageToDict(values)


def _check_finite(value: Any, where: str) -> None:
    """Raise InvalidArgument at the first NaN or infinity in a Struct, ListValue or Value."""
    kind = value.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        for key in sorted(value.fields):  # the same first one named each time
            _check_finite(value.fields[key], f"{where}.{key}")
    elif kind == "google.protobuf.ListValue":
        for i, item in enumerate(value.values):
            _check_finite(item, f"{where}[{i}]")
    else:
        which = value.WhichOneof("kind")
        if which == "number_value" and not math.isfinite(value.number_value):
            raise InvalidArgument(
                f"{where}: {value.number_value} is not a finite number (JSON has no NaN or infinity)",
                field=where,
            )
        if which in ("struct_value", "list_value"):
            _check_finite(getattr(value, which), where)


def continuous_from_proto(continuous: tp.ContinuousTraining) -> ContinuousTraining:
    return ContinuousTraining(
        round_labels=continuous.round_labels,
        round_seconds=continuous.round_seconds,
        max_rounds=continuous.max_rounds,
    )


def ensemble_from_proto(ensemble: tp.RewardModelEnsemble) -> RewardModelEnsemble:
    """ "" for UNSPECIFIED, the number as text for an unknown value (the spec's check rejects it)."""
    vary = ensemble.vary
    return RewardModelEnsemble(
        size=ensemble.size,
        vary=ENSEMBLE_VARY_NAMES.get(vary, str(vary) if vary else ""),
        subset_fraction=ensemble.subset_fraction,
    )


def ensemble_to_proto(ensemble: RewardModelEnsemble) -> tp.RewardModelEnsemble:
    vary = ensemble.vary
    number = cast("tp.EnsembleVary.ValueType", int(vary)) if vary.isdigit() else tp.ENSEMBLE_VARY_UNSPECIFIED
    value = ENSEMBLE_VARY_VALUES.get(vary, number)
    return tp.RewardModelEnsemble(size=ensemble.size, vary=value, subset_fraction=ensemble.subset_fraction)


def watch_from_proto(watch: tp.RewardWatch) -> RewardWatch:
    gold = watch.WhichOneof("gold")
    judge = watch.gold_judge
    return RewardWatch(
        every_steps=watch.every_steps,
        probe=FileSource(paths=list(watch.probe.paths)) if watch.HasField("probe") else None,
        probe_size=watch.probe_size,
        gold_reward_model=watch.gold_reward_model if gold == "gold_reward_model" else None,
        gold_judge=JudgeGold(judge.address, judge.constitution_id, judge.principles_per_label)
        if gold == "gold_judge"
        else None,
        patience=watch.patience,
        min_delta=watch.min_delta,
        stop_on_divergence=watch.stop_on_divergence,
        max_new_tokens=watch.max_new_tokens,
    )


def watch_to_proto(watch: RewardWatch) -> tp.RewardWatch:
    out = tp.RewardWatch(
        every_steps=watch.every_steps,
        probe_size=watch.probe_size,
        patience=watch.patience,
        min_delta=watch.min_delta,
        stop_on_divergence=watch.stop_on_divergence,
        max_new_tokens=watch.max_new_tokens,
    )
    if watch.probe is not None:
        out.probe.paths.extend(watch.probe.paths)
        out.probe.SetInParent()
    if watch.gold_reward_model is not None:
        out.gold_reward_model = watch.gold_reward_model
    elif watch.gold_judge is not None:
        j = watch.gold_judge
        out.gold_judge.CopyFrom(
            tp.JudgeGold(
                address=j.address,
                constitution_id=j.constitution_id,
                principles_per_label=j.principles_per_label,
            )
        )
    return out


def spec_to_proto(spec: RunSpec) -> tp.RunSpec:
    out = tp.RunSpec(
        name=spec.name,
        algorithm=algorithm_value(spec.algorithm),
        base_model=spec.base_model,
        reward_model=spec.reward_model,
        executor=EXECUTOR_VALUES.get(spec.executor, tp.EXECUTOR_UNSPECIFIED),
        resources=tp.Resources(
            gpus=spec.resources.gpus,
            processes=spec.resources.processes,
            cpu=spec.resources.cpu,
            memory=spec.resources.memory,
            nodes=spec.resources.nodes,
            strategy=STRATEGY_VALUES.get(spec.resources.strategy, tp.STRATEGY_UNSPECIFIED),
        ),
        seed=spec.seed,
    )
    data = spec.data
    out.data.eval_fraction = data.eval_fraction
    if data.label_stream is not None:
        s, target = data.label_stream, out.data.label_stream
        target.address = s.address
        target.from_cursor.sequence = s.from_cursor
        if s.to_cursor is not None:
            target.to_cursor.sequence = s.to_cursor
        if s.filter is not None:
            f = s.filter
            target.filter.constitution_id = f.constitution_id
            target.filter.principle_ids.extend(f.principle_ids)
            target.filter.sources.extend(_source_values(f.sources))
            if f.min_confidence is not None:
                target.filter.min_confidence = f.min_confidence
            target.filter.SetInParent()
    elif data.files is not None:
        out.data.files.paths.extend(data.files.paths)
        out.data.files.SetInParent()
    if spec.hyperparameters is not None:
        struct = Struct()
        struct.update(spec.hyperparameters)
        out.hyperparameters.CopyFrom(struct)
    if spec.watch is not None:
        out.watch.CopyFrom(watch_to_proto(spec.watch))
    if spec.ensemble is not None:
        out.ensemble.CopyFrom(ensemble_to_proto(spec.ensemble))
    if spec.continuous is not None:
        c = spec.continuous
        out.continuous.CopyFrom(
            tp.ContinuousTraining(
                round_labels=c.round_labels, round_seconds=c.round_seconds, max_rounds=c.max_rounds
            )
        )
    return out


def spec_json(spec: RunSpec) -> str:
    """The spec as the worker reads it: the RunSpec message as JSON."""
    return MessageToJson(spec_to_proto(spec))


# -- runs -----------------------------------------------------------------------------------------------


def run_from_proto(run: tp.Run) -> Run:
    return Run(
        id=run.id,
        spec=spec_from_proto(run.spec),
        state=state(run.state),
        created_at=common.seconds(run, "created_at"),
        started_at=common.seconds(run, "started_at"),
        finished_at=common.seconds(run, "finished_at"),
        reason=run.reason,
        cursor_start=run.cursor_start.sequence if run.HasField("cursor_start") else None,
        cursor_end=run.cursor_end.sequence if run.HasField("cursor_end") else None,
        last_checkpoint=run.last_checkpoint,
        step=run.step,
        total_steps=run.total_steps,
        last_metrics=dict(run.last_metrics),
        output_dir=run.output_dir,
        job_name=run.job_name,
        attempt=run.attempt,
        rows=run.rows,
        latest_round=run.latest_round,
    )


def run_to_proto(run: Run) -> tp.Run:
    out = tp.Run(
        id=run.id,
        spec=spec_to_proto(run.spec),
        state=cast("tp.RunState.ValueType", int(run.state)),
        reason=run.reason,
        last_checkpoint=run.last_checkpoint,
        step=run.step,
        total_steps=run.total_steps,
        last_metrics=run.last_metrics,
        output_dir=run.output_dir,
        job_name=run.job_name,
        attempt=run.attempt,
        rows=run.rows,
        latest_round=run.latest_round,
    )
    for name in ("created_at", "started_at", "finished_at"):
        seconds = getattr(run, name)
        if seconds is not None:
            getattr(out, name).CopyFrom(common.timestamp(seconds))
    if run.cursor_start is not None:
        out.cursor_start.sequence = run.cursor_start
    if run.cursor_end is not None:
        out.cursor_end.sequence = run.cursor_end
    return out


# -- events ---------------------------------------------------------------------------------------------


def event_kind_to_proto(kind: EventKind) -> tuple[str, Any]:
    """(the RunEvent `kind` field, its message)."""
    if isinstance(kind, MetricsEvent):
        return "metrics", tp.MetricsEvent(step=kind.step, values=kind.values)
    if isinstance(kind, CheckpointEvent):
        return "checkpoint", tp.CheckpointEvent(step=kind.step, path=kind.path)
    if isinstance(kind, StateEvent):
        return "state", tp.StateEvent(
            state=cast("tp.RunState.ValueType", int(kind.state)), reason=kind.reason
        )
    if isinstance(kind, LogEvent):
        return "log", tp.LogEvent(level=kind.level, message=kind.message)
    if isinstance(kind, Round):
        return "round", round_to_proto(kind)
    message = tp.DataEvent(
        rows=kind.rows, labels_read=kind.labels_read, skipped=kind.skipped, round=kind.round
    )
    message.cursor_start.sequence = kind.cursor_start
    message.cursor_end.sequence = kind.cursor_end
    return "data", message


def event_kind_from_proto(event: tp.RunEvent) -> EventKind:
    kind = event.WhichOneof("kind")
    if kind == "metrics":
        return MetricsEvent(step=event.metrics.step, values=dict(event.metrics.values))
    if kind == "checkpoint":
        return CheckpointEvent(step=event.checkpoint.step, path=event.checkpoint.path)
    if kind == "state":
        return StateEvent(state=state(event.state.state), reason=event.state.reason)
    if kind == "data":
        d = event.data
        return DataEvent(
            cursor_start=d.cursor_start.sequence,
            cursor_end=d.cursor_end.sequence,
            rows=d.rows,
            labels_read=d.labels_read,
            skipped=dict(d.skipped),
            round=d.round,
        )
    if kind == "round":
        return round_from_proto(event.round)
    return LogEvent(level=event.log.level, message=event.log.message)


def round_to_proto(r: Round) -> tp.Round:
    out = tp.Round(
        run_id=r.run_id, round=r.round, rows=r.rows, labels_read=r.labels_read, skipped=r.skipped,
        model_dir=r.model_dir, step=r.step,
    )  # fmt: skip
    out.cursor_start.sequence = r.cursor_start
    out.cursor_end.sequence = r.cursor_end
    if r.published_at is not None:
        out.published_at.CopyFrom(common.timestamp(r.published_at))
    return out


def round_from_proto(r: tp.Round) -> Round:
    return Round(
        run_id=r.run_id, round=r.round, cursor_start=r.cursor_start.sequence,
        cursor_end=r.cursor_end.sequence, rows=r.rows, labels_read=r.labels_read, skipped=dict(r.skipped),
        model_dir=r.model_dir, step=r.step, published_at=common.seconds(r, "published_at"),
    )  # fmt: skip


def event_to_proto(event: RunEvent) -> tp.RunEvent:
    out = tp.RunEvent(run_id=event.run_id, sequence=event.sequence, time=common.timestamp(event.time))
    field, message = event_kind_to_proto(event.kind)
    getattr(out, field).CopyFrom(message)
    return out


def event_from_proto(event: tp.RunEvent) -> RunEvent:
    time = common.seconds(event, "time")
    return RunEvent(event.run_id, event.sequence, 0.0 if time is None else time, event_kind_from_proto(event))


class ProtoRunCodec:
    """The run store's payloads: the serialised `charter.trainer.v1.Run` and `RunEvent` messages."""

    def dump_run(self, run: Run) -> bytes:
        return run_to_proto(run).SerializeToString()

    def load_run(self, data: bytes) -> Run:
        return run_from_proto(tp.Run.FromString(data))

    def dump_event(self, event: RunEvent) -> bytes:
        return event_to_proto(event).SerializeToString()

    def load_event(self, data: bytes) -> RunEvent:
        return event_from_proto(tp.RunEvent.FromString(data))


PROTO_CODEC = ProtoRunCodec()


def run_store(url: str, **kwargs: Any) -> RunStore:
    """A `RunStore` on `url` with the proto payload format (kwargs: clock, run_migrations)."""
    from charter.trainer.store import RunStore

    return RunStore(url, PROTO_CODEC, **kwargs)

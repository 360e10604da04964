"""A checked spec as the worker gets it (`resolve`): a reward-model run id replaced by that run's model
folder, local paths made absolute, and the review address set from the service's settings — the
caller's own only when `charter.trainer.admission.review_address` allows it. Also what a run may be
given beyond its spec (`grants`): the review token only for a label-stream run, the judge token only
for a watch whose gold judge is on `trainer.judge_addresses`, the generator's admin token only for a
PPO run whose rollout generator is on `trainer.generator_addresses`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from charter.core import targets
from charter.core.errors import InvalidArgument, NotFound
from charter.trainer.admission import PATH_HYPERPARAMETERS, Limits, review_address, rollout_generator
from charter.trainer.rounds import pick_round, round_ref
from charter.trainer.runs import FileSource, RunSpec, RunState
from charter.trainer.store import RunStore

__all__ = ["grants", "resolve"]


def resolve(spec: RunSpec, store: RunStore, executor: str, limits: Limits) -> RunSpec:
    """The spec as the worker gets it (raises InvalidArgument)."""
    wanted = spec.executor or None
    if wanted is not None and wanted != executor:
        raise InvalidArgument(
            f"spec.executor: this trainer service runs workers with the {executor} executor "
            f"(trainer.executor), not {wanted}",
            field="spec.executor",
        )
    base_model, data, watch = spec.base_model, spec.data, spec.watch
    reward_model = _reward_model(spec.reward_model, "spec.reward_model", store, executor)
    if watch is not None and watch.gold_reward_model:
        gold = _reward_model(watch.gold_reward_model, "spec.watch.gold_reward_model", store, executor)
        watch = replace(watch, gold_reward_model=gold)
    if executor == "local":  # the worker runs in the run folder: paths as the service sees them
        if base_model != "embedded":
            base_model = str(Path(base_model).expanduser().resolve())
        if data.files is not None:
            paths = [str(Path(p).expanduser().resolve()) for p in data.files.paths]
            data = replace(data, files=FileSource(paths=paths))
        if watch is not None and watch.probe is not None:
            paths = [str(Path(p).expanduser().resolve()) for p in watch.probe.paths]
            watch = replace(watch, probe=FileSource(paths=paths))
        named = {k: v for k, v in (spec.hyperparameters or {}).items() if k in PATH_HYPERPARAMETERS}
        files = {k: str(Path(v).expanduser().resolve()) for k, v in named.items() if isinstance(v, str) and v}
        if files:  # checked where the service stands; the worker must read the same files
            spec = replace(spec, hyperparameters={**(spec.hyperparameters or {}), **files})
    if data.label_stream is not None:  # never an address the settings do not allow
        data = replace(data, label_stream=replace(data.label_stream, address=review_address(spec, limits)))
    return replace(spec, reward_model=reward_model, base_model=base_model, data=data, watch=watch)


def grants(spec: RunSpec, limits: Limits) -> tuple[str, ...]:
    """The tokens a run's worker needs: "review" for a label stream, "judge" for an allowed gold judge,
    "generator" for an allowed rollout generator."""
    out = []
    if spec.data.label_stream is not None:
        out.append("review")
    judge = spec.watch.gold_judge if spec.watch is not None else None
    if judge is not None and limits.judge_addresses and targets.within(judge.address, limits.judge_addresses):
        out.append("judge")
    generator, allowed = rollout_generator(spec), limits.generator_addresses
    if generator and allowed and targets.within(generator, allowed):
        out.append("generator")
    return tuple(out)


def _reward_model(value: str, field: str, store: RunStore, executor: str) -> str:
    """A reward model as the worker gets it: a run id becomes that run's model folder — a continuous
    run's round (`ID@N`, `ID@latest`; the bare id is its latest round); a folder (already checked
    under the allowed roots) is made absolute for local workers."""
    if value.startswith("r-"):
        try:
            run_id, which = round_ref(value)
        except ValueError as err:
            raise InvalidArgument(f"{field}: {err}", field=field, value=value) from None
        try:
            source = store.get(run_id)
        except NotFound:
            raise InvalidArgument(f"{field}: no run {run_id}", field=field) from None
        continuous = source.spec.continuous is not None
        if source.spec.algorithm != "reward-model" or not continuous and source.state != RunState.SUCCEEDED:
            raise InvalidArgument(
                f"{field}: run {source.id} is not a finished reward-model run "
                f"({source.spec.algorithm or 'no algorithm'}, {source.state.label})",
                field=field,
            )
        if not continuous:
            if which is not None:
                raise InvalidArgument(
                    f"{field}: run {source.id} is not a continuous run: it has no rounds", field=field
                )
            return source.output_dir
        found = pick_round(store.rounds(run_id), which)
        if found is None:
            wanted = f"round {which}" if which and which != "latest" else "a published round"
            raise InvalidArgument(f"{field}: continuous run {source.id} has no {wanted} yet", field=field)
        return str(found.model_dir)
    if value and executor == "local":
        if not Path(value).exists():
            raise InvalidArgument(f"{field}: {value} is neither a run id nor a model folder", field=field)
        return str(Path(value).expanduser().resolve())
    return value

"""A trainer run's model folder, from the trainer service or the local run store — how policy
evaluation, `charter eval judge --reward-model run:ID`, RL-CAI's reward-model judge and the generator's
SwapModel name a model by the run that trained it. A continuous run's rounds are `run:ID@N` and
`run:ID@latest` (the bare `run:ID` is its latest round)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import CharterSettings

RUN_PREFIX = "run:"


async def final_model(
    run_id: str,
    settings: CharterSettings,
    *,
    address: str | None = None,
    token: str | None = None,
    field: str = "models",
) -> str:
    """The model folder of run `run_id`: a bounded run's final model (the run must have succeeded);
    for a continuous run (`RunSpec.continuous`) a published round — `ID@N` round N, `ID@latest` or
    the bare `ID` the newest (while it still trains, too). `address`: a trainer service to ask (with
    `token`); None: the local run store (`trainer.database_url`)."""
    folder, _ = await run_model(run_id, settings, address=address, token=token, field=field)
    return folder


async def run_model(
    run_id: str,
    settings: CharterSettings,
    *,
    address: str | None = None,
    token: str | None = None,
    field: str = "models",
) -> tuple[str, int]:
    """`final_model`'s folder, and the round it is (0: a bounded run's final model)."""
    from charter_proto.trainer.v1 import trainer_pb2

    from charter.client.trainer import TrainerClient
    from charter.trainer.rounds import pick_round, round_ref

    try:
        run_id, which = round_ref(run_id)
    except ValueError as err:
        raise InvalidArgument(f"{field}: {err}", field=field) from None
    async with contextlib.AsyncExitStack() as stack:
        if address:
            client: Any = await stack.enter_async_context(TrainerClient(address, token=token))
            run = await client.get_run(run_id)
            continuous = run.spec.HasField("continuous")
            succeeded, output = run.state == trainer_pb2.RunState.RUN_STATE_SUCCEEDED, run.output_dir
            rounds = await client.list_rounds(run_id) if continuous else []
        else:
            from charter.api.trainer import run_store

            store = run_store(settings.trainer.database_url.get_secret_value())
            stack.callback(store.close)
            try:
                found = store.get(run_id)
            except NotFound:
                raise NotFound(f"{field}: run {run_id!r}: no such trainer run", field=field) from None
            continuous = found.spec.continuous is not None
            succeeded, output = found.state.label == "succeeded", found.output_dir
            rounds = store.rounds(run_id) if continuous else []
    if continuous:
        chosen = pick_round(rounds, which)
        if chosen is None:
            wanted = f"round {which}" if which and which != "latest" else "a published round"
            raise FailedPrecondition(f"{field}: continuous run {run_id!r} has no {wanted} yet", field=field)
        return str(chosen.model_dir), int(chosen.round)
    if which is not None:
        raise InvalidArgument(
            f"{field}: run {run_id!r} is not a continuous run: it has no rounds", field=field
        )
    model = Path(output)
    if not (model / "config.json").exists():  # output_dir names the model folder; older records its parent
        model = model / "model"
    if not succeeded or not (model / "config.json").exists():
        raise FailedPrecondition(
            f"{field}: run {run_id!r} has no final model (it has not succeeded)", field=field
        )
    return str(model), 0


async def model_folder(
    ref: str, settings: CharterSettings, *, address: str | None = None, token: str | None = None, field: str
) -> str:
    """`run:<id>` -> that run's final model folder (`run:<id>@<round>`, `run:<id>@latest`: a continuous
    run's round); anything else is a folder path, returned as is."""
    if ref.startswith(RUN_PREFIX):
        return await final_model(
            ref.removeprefix(RUN_PREFIX), settings, address=address, token=token, field=field
        )
    return ref


async def model_ref(
    ref: str, settings: CharterSettings, *, address: str | None = None, token: str | None = None, field: str
) -> tuple[str, str]:
    """(`model_folder(ref)`, the name to serve it by): a continuous run's round is named exactly
    (`run:ID@latest` -> `run:ID@3`), anything else keeps its name."""
    if not ref.startswith(RUN_PREFIX):
        return ref, ref
    run_id = ref.removeprefix(RUN_PREFIX)
    folder, round_ = await run_model(run_id, settings, address=address, token=token, field=field)
    return folder, f"{RUN_PREFIX}{run_id.partition('@')[0]}@{round_}" if round_ else ref

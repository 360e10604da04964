"""A trainer run's final model folder, from the trainer service or the local run store — how policy
evaluation, `charter eval judge --reward-model run:ID` and RL-CAI's reward-model judge name a model by
the run that trained it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from charter.core.errors import FailedPrecondition, NotFound
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
    """The folder of run `run_id`'s final model; the run must have succeeded. `address`: a trainer
    service to ask (with `token`); None: the local run store (`trainer.database_url`)."""
    from charter_proto.trainer.v1 import trainer_pb2

    from charter.client.trainer import TrainerClient

    async with contextlib.AsyncExitStack() as stack:
        if address:
            client: Any = await stack.enter_async_context(TrainerClient(address, token=token))
            run = await client.get_run(run_id)
            succeeded, output = run.state == trainer_pb2.RunState.RUN_STATE_SUCCEEDED, run.output_dir
        else:
            from charter.api.trainer import run_store

            store = run_store(settings.trainer.database_url.get_secret_value())
            stack.callback(store.close)
            try:
                run = store.get(run_id)
            except NotFound:
                raise NotFound(f"{field}: run {run_id!r}: no such trainer run", field=field) from None
            succeeded, output = run.state.label == "succeeded", run.output_dir
    model = Path(output) / "model"
    if not succeeded or not (model / "config.json").exists():
        raise FailedPrecondition(
            f"{field}: run {run_id!r} has no final model (it has not succeeded)", field=field
        )
    return str(model)


async def model_folder(
    ref: str, settings: CharterSettings, *, address: str | None = None, token: str | None = None, field: str
) -> str:
    """`run:<id>` -> that run's final model folder; anything else is a folder path, returned as is."""
    if ref.startswith(RUN_PREFIX):
        return await final_model(
            ref.removeprefix(RUN_PREFIX), settings, address=address, token=token, field=field
        )
    return ref

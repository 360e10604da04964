"""A continuous run's worker loop (`RunSpec.continuous`): read a round of accepted labels off the
review stream (`charter.trainer.rounds.read_round`), cache it in the round's folder, train on it from
the previous round's model, publish the model as round N, and go on from the round's `cursor_end` —
until `max_rounds` rounds are published (the run succeeds) or the run is cancelled.

A resumed attempt (a killed worker, a service restart) reports the rounds already published again
(the run store records each round once), trains the round it was in on that round's cached rows from
its last checkpoint, and carries on. docs/trainer.md, "Continuous runs", describes it for users.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from charter.app.trainer_data import DataManifest, review_token, split
from charter.core.errors import InvalidArgument
from charter.core.files import write_atomic
from charter.trainer.data import PreferenceData
from charter.trainer.executor import CHECKPOINTS_DIR, DATA_DIR, MODEL_DIR
from charter.trainer.rounds import PUBLISHED, Published, RoundFolders, RoundTrigger, read_round
from charter.trainer.spec import trl_config

if TYPE_CHECKING:
    from charter.app.trainer_worker import Runner


async def read_round_stream(
    address: str, token: str, from_cursor: int, flt: Any, trigger: RoundTrigger
) -> PreferenceData:
    """One round's preference rows from the review service's accepted stream after `from_cursor`,
    followed until `trigger` closes the round."""
    from charter.api.review import preference_row
    from charter.client.review import ReviewClient

    async with ReviewClient(address, token=token) as review:
        labels = review.stream_labels(from_cursor, flt, follow=True)
        try:
            rows = ((a.sequence, preference_row(a)) async for a in labels)
            return await read_round(rows, from_cursor, trigger)
        finally:
            await labels.aclose()


class ContinuousRunner:
    """Rounds for the worker `runner` (its spec, checked spec, run folder and event emitter)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.spec, self.checked, self.emit = runner.spec, runner.checked, runner.emit
        continuous = self.checked.continuous
        assert continuous is not None
        self.max_rounds = continuous.max_rounds
        self.trigger = RoundTrigger(continuous.round_labels, continuous.round_seconds)
        self.folders = RoundFolders(runner.run_dir)

    def run(self) -> None:
        from charter.app.trainer_worker import model_folder

        published = self.folders.published()
        for done in published:  # the service records each round once; a resumed worker says them again
            self.emit("round", **asdict(done))
        stream = self.spec.data.label_stream
        cursor = published[-1].cursor_end if published else stream.from_cursor.sequence
        model = published[-1].model_dir if published else model_folder(self.checked.base_model)
        step = published[-1].step if published else 0
        n = len(published) + 1
        min_rows = 1
        while not self.max_rounds or n <= self.max_rounds:
            rows, manifest = self._data(n, cursor, min_rows)
            trained = self._train(n, model, rows, step)
            if trained is None:  # nothing the trainer can use: read the round again, one row longer
                self.emit("log", level="warning", message=(
                    f"round {n}: none of its {len(rows)} rows is one the trainer can use (longer than "
                    f"max_length?); reading it again from cursor {cursor} until it has {len(rows) + 1}"
                ))  # fmt: skip
                self._forget_data(n)
                min_rows = len(rows) + 1
                continue
            step, min_rows = trained, 1
            folder = self.folders.folder(n)
            done = Published(
                round=n, cursor_start=manifest.cursor_start, cursor_end=manifest.cursor_end,
                rows=manifest.rows, labels_read=manifest.labels_read, model_dir=str(folder / MODEL_DIR),
                step=step, skipped=manifest.skipped,
            )  # fmt: skip
            write_atomic(folder / PUBLISHED, done.to_json())
            self.emit("round", **asdict(done))
            cursor, model, n = done.cursor_end, done.model_dir, n + 1
        self.emit("finished", output_dir=model)

    def _forget_data(self, n: int) -> None:
        """Drop round `n`'s cached rows (nothing was trained on them): the manifest first, so a kill
        between the two leaves the round to be read again."""
        folder = self.folders.folder(n) / DATA_DIR
        (folder / "manifest.json").unlink(missing_ok=True)
        (folder / "rows.jsonl").unlink(missing_ok=True)

    def _data(self, n: int, cursor: int, min_rows: int = 1) -> tuple[list[dict[str, Any]], DataManifest]:
        """Round `n`'s rows: cached in its folder, else read off the stream from `cursor` (at least
        `min_rows` usable ones) and cached before any training, so a resumed attempt trains the round
        on the same rows."""
        folder = self.folders.folder(n) / DATA_DIR
        rows_path, manifest_path = folder / "rows.jsonl", folder / "manifest.json"
        if manifest_path.exists():
            manifest = DataManifest(**json.loads(manifest_path.read_text(encoding="utf-8")))
            with open(rows_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()], manifest
        stream = self.spec.data.label_stream
        if not stream.address:
            raise InvalidArgument(
                "spec.data.label_stream.address: no review service address (and the trainer has none)",
                field="spec.data.label_stream.address",
            )
        flt = stream.filter if stream.HasField("filter") else None
        self.emit("log", level="info", message=f"round {n}: reading labels after cursor {cursor}")
        trigger = replace(self.trigger, min_rows=min_rows)
        data = asyncio.run(read_round_stream(stream.address, review_token(), cursor, flt, trigger))
        if not data.rows:
            raise InvalidArgument(
                f"spec.data: the label stream ended after cursor {data.cursor_end} before round {n} had a "
                "usable label",
                field="spec.data",
            )
        manifest = DataManifest(
            "preference", len(data.rows), data.cursor_start, data.cursor_end, data.labels_read, data.skipped
        )
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.rows))
        write_atomic(manifest_path, json.dumps(asdict(manifest)))  # last: the round's data is complete
        self.emit(
            "data", cursor_start=manifest.cursor_start, cursor_end=manifest.cursor_end, rows=manifest.rows,
            labels_read=manifest.labels_read, skipped=manifest.skipped, round=n,
        )  # fmt: skip
        return data.rows, manifest

    def _train(self, n: int, start_model: str, rows: list[dict[str, Any]], offset: int) -> int | None:
        """Train round `n` on `rows` from `start_model`; the run's step count after it, or None when
        the trainer keeps none of the rows (TRL drops the ones longer than `max_length`)."""
        from charter.app.trainer_worker import _ReportCallback, _tokenizer, last_checkpoint

        runner, algorithm = self.runner, self.checked.algorithm
        folder = self.folders.folder(n)
        checkpoints, output = folder / CHECKPOINTS_DIR, folder / MODEL_DIR
        config = trl_config(
            algorithm, self.checked.hyperparameters, output_dir=str(checkpoints), seed=self.spec.seed,
            use_cpu=runner.use_cpu,
        )  # fmt: skip
        tokenizer = _tokenizer(start_model)
        train_rows, eval_rows = split(rows, self.spec.data.eval_fraction, self.spec.seed)
        trainer = runner._build(algorithm, start_model, tokenizer, train_rows, eval_rows, config=config)
        if len(trainer.train_dataset) == 0:
            return None
        trainer.add_callback(_ReportCallback(self.emit, offset=offset))
        last = last_checkpoint(checkpoints, "trainer_state.json")  # an earlier attempt's, same rows
        if last:
            self.emit("log", level="info", message=f"round {n}: resuming from {last}")
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        step = offset + int(trainer.state.global_step)
        if algorithm == "reward-model" and eval_rows:
            from charter.trainer.reward import pairwise_accuracy

            accuracy = pairwise_accuracy(trainer.model, tokenizer, eval_rows)
            self.emit("metrics", step=step, values={"eval_pairwise_accuracy": accuracy, "round": float(n)})
        trainer.save_model(str(output))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(output))
        return step

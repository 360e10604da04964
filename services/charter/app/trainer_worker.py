"""A training run's worker: `python -m charter.app.trainer_worker --spec SPEC --run-dir DIR [--resume]`
(under `accelerate launch` for several processes/GPUs).

It reads the run spec, fetches the data once (the review stream over the spec's cursor range, or
files) and caches it in DIR/data, so a resumed run trains on exactly the same rows; trains the
spec's algorithm with checkpoints in DIR/checkpoints; writes the final model to DIR/model; and
reports progress as `charter.trainer.events` lines on stdout. The trainer service starts it (a local
subprocess or a Kubernetes Job) and records what it reports.

The review token for a stream source comes from `CHARTER_REVIEW_TOKEN` or the file named by
`CHARTER_REVIEW_TOKEN_FILE` (a mounted Secret); `CHARTER_TORCH_THREADS` sets torch's thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter_proto.trainer.v1 import trainer_pb2
from google.protobuf.json_format import Parse, ParseError
from transformers import TrainerCallback

from charter.api.trainer import spec_from_proto
from charter.core.auth import read_token
from charter.core.errors import CharterError, InvalidArgument
from charter.core.files import write_atomic
from charter.trainer import events
from charter.trainer.executor import CHECKPOINTS_DIR, DATA_DIR, MODEL_DIR
from charter.trainer.spec import CheckedSpec, check, trl_config

if TYPE_CHECKING:
    from charter.trainer.data import PreferenceData


@dataclass
class DataManifest:
    """What DIR/data/manifest.json records about the cached rows."""

    kind: str
    """"preference", "sft" or "prompts"."""
    rows: int
    cursor_start: int = 0
    cursor_end: int = 0
    labels_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def last_checkpoint(folder: Path, marker: str | None = None) -> Path | None:
    """The newest complete `checkpoint-<step>` folder in `folder` (with the file `marker` in it, when
    given), or None."""
    steps = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if path.is_dir() and step.isdigit() and (marker is None or (path / marker).exists()):
            steps.append((int(step), path))
    return max(steps)[1] if steps else None


def review_token() -> str:
    token = os.environ.get("CHARTER_REVIEW_TOKEN", "")
    token_file = os.environ.get("CHARTER_REVIEW_TOKEN_FILE")
    if not token and token_file:
        token = read_token(Path(token_file), "CHARTER_REVIEW_TOKEN_FILE")
    return token


async def read_label_stream(
    address: str, token: str, from_cursor: int, to_cursor: int | None, flt: Any
) -> PreferenceData:
    """Preference rows from the review service's accepted stream after `from_cursor` up to
    `to_cursor` (None: what is there now; else it waits for labels not accepted yet)."""
    from charter.api.review import preference_row
    from charter.client.review import ReviewClient
    from charter.trainer.data import from_stream

    async with ReviewClient(address, token=token) as review:
        labels = review.stream_labels(from_cursor, flt, follow=to_cursor is not None)
        try:
            rows = ((a.sequence, preference_row(a)) async for a in labels)
            return await from_stream(rows, from_cursor, to_cursor)
        finally:
            await labels.aclose()


def load_data(
    spec: trainer_pb2.RunSpec, algorithm: str, run_dir: Path
) -> tuple[list[dict[str, Any]], DataManifest, bool]:
    """(rows, manifest, fetched): the cached rows if DIR/data has them, else fetched and cached."""
    folder = run_dir / DATA_DIR
    rows_path, manifest_path = folder / "rows.jsonl", folder / "manifest.json"
    if manifest_path.exists():
        manifest = DataManifest(**json.loads(manifest_path.read_text(encoding="utf-8")))
        with open(rows_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return rows, manifest, False
    source = spec.data
    if algorithm == "sft":
        if source.WhichOneof("source") != "files":
            raise InvalidArgument(
                "spec.data: SFT trains on SL-CAI outputs: give files (sft.jsonl or an output folder)",
                field="spec.data",
            )
        from charter.trainer.data import sft_rows

        rows = sft_rows(source.files.paths)
        manifest = DataManifest("sft", len(rows))
    elif source.WhichOneof("source") == "files":
        from charter.trainer.data import from_files

        data = from_files(source.files.paths, seed=spec.seed)
        rows = data.rows
        manifest = DataManifest("preference", len(rows), labels_read=data.labels_read)
    else:
        stream = source.label_stream
        if not stream.address:
            raise InvalidArgument(
                "spec.data.label_stream.address: no review service address (and the trainer has none)",
                field="spec.data.label_stream.address",
            )
        to_cursor = stream.to_cursor.sequence if stream.HasField("to_cursor") else None
        flt = stream.filter if stream.HasField("filter") else None
        data = asyncio.run(
            read_label_stream(stream.address, review_token(), stream.from_cursor.sequence, to_cursor, flt)
        )
        rows = data.rows
        manifest = DataManifest(
            "preference", len(rows), data.cursor_start, data.cursor_end, data.labels_read, data.skipped
        )
    if not rows:
        raise InvalidArgument("spec.data: the data source holds no usable rows", field="spec.data")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(manifest_path, json.dumps(asdict(manifest)))
    return rows, manifest, True


def split(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): a seeded shuffle, the last `fraction` held out (at least one row if fraction > 0)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def model_folder(source: str) -> str:
    """A Hugging Face model folder for `source` ("embedded", a .gguf file or a folder): the same
    converted folder the inference engines use (one per model), loaded in float32 for training."""
    if source == "embedded" or source.endswith(".gguf"):
        from charter.inference.models import prepare

        return str(prepare(source))
    return source


TRAIN_DTYPE = "float32"
"""Weights train in float32 (master weights; bf16 mixed precision comes from the config on GPUs),
whatever dtype the folder stores."""


def _tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class Runner:
    def __init__(
        self,
        spec: trainer_pb2.RunSpec,
        checked: CheckedSpec,
        run_dir: Path,
        resume: bool,
        emit: events.Emitter,
    ) -> None:
        self.spec, self.checked, self.run_dir, self.resume, self.emit = spec, checked, run_dir, resume, emit
        self.checkpoints = run_dir / CHECKPOINTS_DIR
        self.output = run_dir / MODEL_DIR
        import torch

        self.use_cpu = not torch.cuda.is_available()
        self.config = trl_config(
            checked.algorithm,
            checked.hyperparameters,
            output_dir=str(self.checkpoints),
            seed=spec.seed,
            use_cpu=self.use_cpu,
        )

    def run(self) -> None:
        rows, manifest, fetched = load_data(self.spec, self.checked.algorithm, self.run_dir)
        if fetched:
            self.emit(
                "data", cursor_start=manifest.cursor_start, cursor_end=manifest.cursor_end,
                rows=manifest.rows, labels_read=manifest.labels_read, skipped=manifest.skipped,
            )  # fmt: skip
        base = model_folder(self.checked.base_model)
        algorithm = self.checked.algorithm
        if algorithm == "ppo":
            self._ppo(base, rows)
        else:
            self._trl(algorithm, base, rows)
        self.emit("finished", output_dir=str(self.output))

    # -- TRL trainers ---------------------------------------------------------------------------

    def _trl(self, algorithm: str, base: str, rows: list[dict[str, Any]]) -> None:
        tokenizer = _tokenizer(base)
        train_rows, eval_rows = split(rows, self.spec.data.eval_fraction, self.spec.seed)
        trainer = self._build(algorithm, base, tokenizer, train_rows, eval_rows)
        trainer.add_callback(_ReportCallback(self.emit))
        # transformers writes trainer_state.json after the weights and optimizer: a folder without it
        # is a save the worker was killed in the middle of
        last = last_checkpoint(self.checkpoints, "trainer_state.json") if self.resume else None
        if last:
            self.emit("log", level="info", message=f"resuming from {last}")
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        if algorithm == "reward-model" and eval_rows:
            from charter.trainer.reward import pairwise_accuracy

            accuracy = pairwise_accuracy(trainer.model, tokenizer, eval_rows)
            self.emit("metrics", step=trainer.state.global_step, values={"eval_pairwise_accuracy": accuracy})
        trainer.save_model(str(self.output))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(self.output))

    def _build(
        self,
        algorithm: str,
        base: str,
        tokenizer: Any,
        train_rows: list[dict[str, Any]],
        eval_rows: list[dict[str, Any]],
    ) -> Any:
        from datasets import Dataset

        config = self.config
        if algorithm == "sft":
            from trl import SFTTrainer

            return SFTTrainer(
                model=_causal_lm(base), args=config, processing_class=tokenizer,
                train_dataset=Dataset.from_list(train_rows),
                eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            )  # fmt: skip
        if algorithm == "reward-model":
            from transformers import AutoModelForSequenceClassification

            from charter.trainer.reward import SoftRewardTrainer, reward_dataset

            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=TRAIN_DTYPE)
            model.config.pad_token_id = tokenizer.pad_token_id
            return SoftRewardTrainer(
                model=model, args=config, processing_class=tokenizer,
                train_dataset=reward_dataset(train_rows),
                eval_dataset=reward_dataset(eval_rows) if eval_rows else None,
            )  # fmt: skip
        if algorithm == "dpo":
            from trl import DPOTrainer

            from charter.trainer.dpo import dpo_dataset

            return DPOTrainer(
                model=_causal_lm(base), args=config, processing_class=tokenizer,
                train_dataset=dpo_dataset(train_rows, self.spec.seed),
                eval_dataset=dpo_dataset(eval_rows, self.spec.seed) if eval_rows else None,
            )  # fmt: skip
        from charter.trainer.online import online_trainer, prompts_from_rows

        return online_trainer(
            algorithm,
            _causal_lm(base),
            tokenizer,
            self.spec.reward_model,
            prompts_from_rows(train_rows),
            config,
        )

    # -- PPO (Charter's own) --------------------------------------------------------------------

    def _ppo(self, base: str, rows: list[dict[str, Any]]) -> None:
        from charter.trainer.online import prompts_from_rows
        from charter.trainer.ppo import PolicyWithValueHead, PPOTrainer, RewardModelScorer

        config = self.config
        tokenizer = _tokenizer(base)
        policy = PolicyWithValueHead.from_pretrained(base, dtype=TRAIN_DTYPE)
        scorer = RewardModelScorer(self.spec.reward_model)
        texts = [
            tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            for prompt in prompts_from_rows(rows)
        ]
        trainer = PPOTrainer(policy, None, tokenizer, scorer, config)
        self.emit = events.Emitter(
            self.emit.stream, enabled=self.emit.enabled and trainer.accelerator.is_main_process
        )
        last = last_checkpoint(self.checkpoints) if self.resume else None  # PPO saves atomically
        if last is not None:
            trainer.load(last)
            self.emit("log", level="info", message=f"resuming from {last}")
        self.emit("progress", total_steps=config.total_steps)
        while trainer.step_count < config.total_steps:
            chunk = min(
                config.save_steps - trainer.step_count % config.save_steps,
                config.total_steps - trainer.step_count,
            )
            trainer.train(
                texts,
                chunk,
                on_metrics=lambda m: self.emit("metrics", step=int(m["step"]), values=events.finite(m)),
            )
            path = trainer.save(self.checkpoints / f"checkpoint-{trainer.step_count}")
            self.emit("checkpoint", step=trainer.step_count, path=str(path))
        if trainer.accelerator.is_main_process:
            trainer.unwrapped.save_pretrained(self.output)
            tokenizer.save_pretrained(str(self.output))


def _causal_lm(folder: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=TRAIN_DTYPE)


class _ReportCallback(TrainerCallback):
    """Reports the trainer's logs, checkpoints and length as events; only the main process reports."""

    def __init__(self, emit: events.Emitter) -> None:
        self.emit = emit

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.emit("progress", total_steps=int(state.max_steps))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        values = events.finite(logs or {})
        if state.is_world_process_zero and values:
            self.emit("metrics", step=int(state.global_step), values=values)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.emit("checkpoint", step=int(state.global_step), path=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="charter.app.trainer_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the run spec (JSON of charter.trainer.v1.RunSpec)")
    parser.add_argument("--run-dir", required=True, help="the run's folder: data cache, checkpoints, model")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    emit = events.Emitter(enabled=os.environ.get("RANK", "0") == "0")
    try:
        threads = os.environ.get("CHARTER_TORCH_THREADS")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        try:
            spec = Parse(Path(args.spec).read_text(encoding="utf-8"), trainer_pb2.RunSpec())
        except (OSError, ParseError) as err:
            raise InvalidArgument(f"{args.spec}: cannot read the run spec: {err}") from None
        import torch

        checked = check(spec_from_proto(spec), use_cpu=not torch.cuda.is_available())
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        Runner(spec, checked, run_dir, args.resume, emit).run()
        return 0
    except CharterError as err:
        emit("error", message=str(err))
        return 1
    except Exception as err:  # report why, then fail: the service marks the run FAILED with this reason
        traceback.print_exc()
        emit("error", message=f"{type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""A training run's worker: `python -m charter.app.trainer_worker --spec SPEC --run-dir DIR [--resume]`
(under `accelerate launch` for several processes/GPUs).

It reads the run spec, fetches the data once (the review stream over the spec's cursor range, or
files) and caches it in DIR/data (`charter.app.trainer_data`), so a resumed run trains on exactly the
same rows; trains the spec's algorithm with checkpoints in DIR/checkpoints; writes the final model to
DIR/model; and reports progress as `charter.trainer.events` lines on stdout. The trainer service
starts it (a local subprocess or a Kubernetes Job) and records what it reports. A PPO/GRPO/RLOO spec
with a `watch` runs the reward-hacking watch (`charter.app.reward_watch`) beside the training; a
reward-model spec with an `ensemble` trains its members one after another (`charter.app.reward_ensemble`).

The review token for a stream source comes from `CHARTER_REVIEW_TOKEN` or the file named by
`CHARTER_REVIEW_TOKEN_FILE` (a mounted Secret), the watch's judge token from `CHARTER_JUDGE_TOKEN` /
`CHARTER_JUDGE_TOKEN_FILE`; `CHARTER_TORCH_THREADS` sets torch's thread count; `CHARTER_EVENT_NONCE`
is the attempt's nonce its event lines carry (the service accepts no others).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from charter_proto.trainer.v1 import trainer_pb2
from google.protobuf.json_format import Parse, ParseError
from transformers import TrainerCallback

from charter.api.trainer import spec_from_proto
from charter.app.reward_ensemble import NO_EVAL_SPLIT, EnsembleFolder
from charter.app.reward_watch import Watch, WatchCallback, checkpoint_step
from charter.app.trainer_data import DataManifest, load_data, read_label_stream, review_token, split
from charter.core import tracing
from charter.core.errors import CharterError, InvalidArgument
from charter.core.settings import tracing_settings
from charter.trainer import events
from charter.trainer.admission import generator_of
from charter.trainer.executor import CHECKPOINTS_DIR, MODEL_DIR
from charter.trainer.spec import CheckedSpec, check, trl_config

__all__ = [
    "DataManifest",
    "Runner",
    "last_checkpoint",
    "load_data",
    "main",
    "read_label_stream",
    "review_token",
]


def last_checkpoint(folder: Path, marker: str | None = None) -> Path | None:
    """The newest complete `checkpoint-<step>` folder in `folder` (with the file `marker` in it, when
    given), or None."""
    steps = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if path.is_dir() and step.isdigit() and (marker is None or (path / marker).exists()):
            steps.append((int(step), path))
    return max(steps)[1] if steps else None


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
        self.closing = contextlib.ExitStack()  # what the run opened that outlives a trainer's construction
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
        with self.closing:
            self._run()

    def _run(self) -> None:
        if self.checked.continuous is not None:  # rounds on the open label stream
            from charter.app.trainer_continuous import ContinuousRunner

            ContinuousRunner(self).run()
            return
        # several processes (nodes) share the run folder: rank 0 fetches, caches and reports the data,
        # the others read its cache (Charter's PPOConfig has no barrier: there each process fetches)
        first = getattr(self.config, "main_process_first", None)
        with first(local=False, desc="the run's data") if first else contextlib.nullcontext():
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
        elif self.checked.ensemble is not None:
            self._ensemble(base, rows)
        else:
            self._trl(algorithm, base, rows)
        self.emit("finished", output_dir=str(self.output))

    # -- TRL trainers ---------------------------------------------------------------------------

    def _trl(self, algorithm: str, base: str, rows: list[dict[str, Any]]) -> None:
        tokenizer = _tokenizer(base)
        train_rows, eval_rows = split(rows, self.spec.data.eval_fraction, self.spec.seed)
        watch = self._watch(tokenizer)
        trainer = self._build(algorithm, base, tokenizer, train_rows, eval_rows, watch)
        trainer.add_callback(_ReportCallback(self.emit))
        # transformers writes trainer_state.json after the weights and optimizer: a folder without it
        # is a save the worker was killed in the middle of
        last = last_checkpoint(self.checkpoints, "trainer_state.json") if self.resume else None
        if last:
            self.emit("log", level="info", message=f"resuming from {last}")
        if watch is not None:  # the reference answers come from the weights before any training
            watch.prepare(trainer.model)
            watch.resume(checkpoint_step(last))
            trainer.add_callback(WatchCallback(watch))
        if watch is None or not watch.stopped:
            trainer.train(resume_from_checkpoint=str(last) if last else None)
        if algorithm == "reward-model" and eval_rows:
            from charter.trainer.reward import pairwise_accuracy

            accuracy = pairwise_accuracy(trainer.model, tokenizer, eval_rows)
            self.emit("metrics", step=trainer.state.global_step, values={"eval_pairwise_accuracy": accuracy})
        if watch is not None and watch.stopped:
            watch.export_best(self.output)
            return
        if getattr(trainer, "is_fsdp_enabled", False):  # sharded checkpoints; the model is saved whole
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(self.output))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(self.output))

    def _ensemble(self, base: str, rows: list[dict[str, Any]]) -> None:
        """A reward-model ensemble: its members one after another, then their spread on the held-out
        pairs. Member i reports its steps after the members before it (step i·N + its own step, of
        K·N in all) with a `member` value; a resumed run keeps the members already written."""
        import gc

        import torch
        from accelerate import PartialState
        from transformers import set_seed

        settings = self.checked.ensemble
        assert settings is not None
        tokenizer = _tokenizer(base)
        train_rows, eval_rows = split(rows, self.spec.data.eval_fraction, self.spec.seed)
        folder = EnsembleFolder(
            settings, model_dir=self.output, checkpoints=self.checkpoints, seed=self.spec.seed
        )
        if not eval_rows:
            self.emit("log", level="warning", message=NO_EVAL_SPLIT)
        for i in range(settings.size):
            if self.resume and folder.finished(i) is not None:
                self.emit("log", level="info", message=f"member {i} was trained by an earlier attempt: kept")
                continue
            seed, member_rows = folder.seed(i), folder.rows(i, train_rows)
            config = trl_config(
                "reward-model", self.checked.hyperparameters, output_dir=str(folder.checkpoints(i)),
                seed=seed, use_cpu=self.use_cpu,
            )  # fmt: skip
            set_seed(seed)  # the score head's initialisation is the member's too
            trainer = self._build("reward-model", base, tokenizer, member_rows, eval_rows, config=config)
            trainer.add_callback(_ReportCallback(self.emit, member=i, members=settings.size))
            last = last_checkpoint(folder.checkpoints(i), "trainer_state.json") if self.resume else None
            if last:
                self.emit("log", level="info", message=f"member {i}: resuming from {last}")
            trainer.train(resume_from_checkpoint=str(last) if last else None)
            folder.save_member(i, trainer, tokenizer, train_rows=len(member_rows))
            del trainer  # one member in memory at a time
            gc.collect()
            if not self.use_cpu:
                torch.cuda.empty_cache()
        if PartialState().is_main_process:
            values = folder.finish(eval_rows, base_model=self.checked.base_model)
            if values:
                self.emit("metrics", step=folder.total_steps(), values=values)

    def _watch(self, tokenizer: Any) -> Watch | None:
        """The run's reward-hacking watch (None without one)."""
        if self.checked.watch is None:
            return None
        prompt_length = getattr(self.config, "max_prompt_length", None)  # PPO's; TRL has none
        return Watch(
            self.checked.watch, run_dir=self.run_dir, proxy=self.spec.reward_model, seed=self.spec.seed,
            tokenizer=tokenizer, emit=self.emit, max_prompt_length=prompt_length,
        )  # fmt: skip

    def _build(
        self,
        algorithm: str,
        base: str,
        tokenizer: Any,
        train_rows: list[dict[str, Any]],
        eval_rows: list[dict[str, Any]],
        watch: Watch | None = None,
        config: Any = None,
    ) -> Any:
        from datasets import Dataset

        config = config if config is not None else self.config
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
            from charter.trainer.dpo import SoftDPOTrainer, dpo_dataset

            return SoftDPOTrainer(
                model=_causal_lm(base), args=config, processing_class=tokenizer,
                train_dataset=dpo_dataset(train_rows),
                eval_dataset=dpo_dataset(eval_rows) if eval_rows else None,
            )  # fmt: skip
        from charter.trainer.online import online_trainer, prompts_from_rows

        prompts = prompts_from_rows(train_rows)
        prompts = watch.split(prompts) if watch is not None else prompts  # a held-out probe leaves training
        sampler, generator = None, generator_of(algorithm, self.checked.hyperparameters)
        if generator:  # rollouts on the generator's engine, the weights pushed to it
            from charter.app.generator_sampler import generator_token, online_sampler

            run, token = self.run_dir.name, generator_token()
            sampler = online_sampler(generator, prompts, config, run=run, token=token)
            self.closing.callback(sampler.close)
        return online_trainer(
            algorithm, _causal_lm(base), tokenizer, self.spec.reward_model, prompts, config, sampler=sampler
        )

    # -- PPO (Charter's own) --------------------------------------------------------------------

    def _ppo(self, base: str, rows: list[dict[str, Any]]) -> None:
        from charter.trainer.online import prompts_from_rows
        from charter.trainer.ppo import PolicyWithValueHead, PPOTrainer, RewardModelScorer

        config = self.config
        tokenizer = _tokenizer(base)
        policy = PolicyWithValueHead.from_pretrained(base, dtype=TRAIN_DTYPE)
        scorer = RewardModelScorer(self.spec.reward_model)
        watch = self._watch(tokenizer)
        prompts = prompts_from_rows(rows)
        prompts = watch.split(prompts) if watch is not None else prompts
        template = tokenizer.apply_chat_template
        texts = [template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        sampler = None
        if config.rollout_generator:  # rollouts on the generator's engine, the weights pushed to it
            from charter.app.generator_sampler import GeneratorSampler, generator_token

            sampler = GeneratorSampler(
                config.rollout_generator, dict(zip(texts, prompts, strict=True)), config.rollout_sampling(),
                run=self.run_dir.name, token=generator_token(),
            )  # fmt: skip
            self.closing.callback(sampler.close)
        trainer = PPOTrainer(policy, None, tokenizer, scorer, config, sampler=sampler)
        self.emit = events.Emitter(
            self.emit.stream, enabled=self.emit.enabled and trainer.accelerator.is_main_process,
            nonce=self.emit.nonce,
        )  # fmt: skip
        if watch is not None:  # the reference answers come from the weights before any training
            watch.prepare(trainer.unwrapped.pretrained)
        last = last_checkpoint(self.checkpoints) if self.resume else None  # PPO saves atomically
        if last is not None:
            trainer.load(last)
            self.emit("log", level="info", message=f"resuming from {last}")
        self.emit("progress", total_steps=config.total_steps)
        total, unwrapped = config.total_steps, trainer.unwrapped

        def check() -> bool:  # True: the watch stops the run
            return watch is not None and watch.maybe_check(
                trainer.step_count, total, unwrapped.pretrained, unwrapped
            )

        stop = watch is not None and watch.resume(trainer.step_count) or check()
        while not stop and trainer.step_count < total:
            step = trainer.step_count  # chunks end at each checkpoint, each check and the last step
            end = min(
                step + config.save_steps - step % config.save_steps,
                total,
                watch.next_check(step) if watch else total,
            )
            trainer.train(
                texts, end - step,
                on_metrics=lambda m: self.emit("metrics", step=int(m["step"]), values=events.finite(m)),
            )  # fmt: skip
            stop = check()
            if trainer.step_count % config.save_steps == 0 or trainer.step_count == total:
                path = trainer.save(self.checkpoints / f"checkpoint-{trainer.step_count}")
                self.emit("checkpoint", step=trainer.step_count, path=str(path))
                if watch is not None:
                    watch.saved(trainer.step_count)
        if watch is not None and watch.stopped:
            watch.export_best(self.output)
        elif trainer.accelerator.is_main_process:
            trainer.unwrapped.save_pretrained(self.output)
            tokenizer.save_pretrained(str(self.output))


def _causal_lm(folder: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=TRAIN_DTYPE)


class _ReportCallback(TrainerCallback):
    """Reports the trainer's logs, checkpoints and length as events; only the main process reports.

    For member `member` of an ensemble of `members` (each N steps long) the steps are the run's: the
    member's own step + member·N, of members·N in all, and its metrics carry `member`."""

    def __init__(
        self, emit: events.Emitter, *, member: int | None = None, members: int = 1, offset: int = 0
    ) -> None:
        self.emit, self.member, self.members = emit, member, members
        self.base = offset
        """Steps before this trainer's (a continuous run's earlier rounds)."""
        self.offset = offset

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.offset = self.base + (self.member or 0) * int(state.max_steps)
        if state.is_world_process_zero:
            self.emit("progress", total_steps=self.base + self.members * int(state.max_steps))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        values = events.finite(logs or {})
        if state.is_world_process_zero and values:
            if self.member is not None:
                values["member"] = float(self.member)
            self.emit("metrics", step=self.offset + int(state.global_step), values=values)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.emit("checkpoint", step=self.offset + int(state.global_step), path=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="charter.app.trainer_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the run spec (JSON of charter.trainer.v1.RunSpec)")
    parser.add_argument("--run-dir", required=True, help="the run's folder: data cache, checkpoints, model")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    # the attempt's nonce, from the service that launched it (none when run by hand: the bare prefix)
    emit = events.Emitter(
        enabled=os.environ.get("RANK", "0") == "0", nonce=os.environ.get(events.NONCE_ENV, "")
    )
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
        tracing.configure(tracing_settings())  # CHARTER_TRACING__*; off: nothing is set up
        attributes = {"charter.run_id": run_dir.name, "charter.algorithm": checked.algorithm,
                      "charter.resume": args.resume}  # fmt: skip
        with tracing.span("trainer.run", attributes, root=True):  # one trace per run (this process)
            Runner(spec, checked, run_dir, args.resume, emit).run()
        return 0
    except CharterError as err:
        emit("error", message=str(err))
        return 1
    except Exception as err:  # report why, then fail: the service marks the run FAILED with this reason
        traceback.print_exc()
        emit("error", message=f"{type(err).__name__}: {err}")
        return 1
    finally:
        tracing.shutdown()  # export what is pending before the process ends


if __name__ == "__main__":
    sys.exit(main())

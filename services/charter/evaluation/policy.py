"""`charter eval policy`: did training help? Generate from each model, judge, score, report.

Steps (each resumable: what an output folder already holds is not done again):
1. **resolve** the models (a folder, `embedded`, a trainer run's final model, an OpenAI-compatible
   endpoint, a running generator) and check every input before any work: unknown runs, missing
   folders, reward models that do not load, an empty prompt set — one clear error, nothing written;
2. **generate** one reply per prompt and model through the generator service (started in this
   process on each model in turn, or the model's own service), batched, into
   `generations/<model>/records.jsonl`;
3. **judge** every pair of models on every prompt through the judge service (both orders, K
   principles; red-team prompts by the red-team constitution, benign ones by the benign set's) into
   `judgments/records.jsonl`;
4. **score** every reply with each reward model, and the gold implicit accuracy of each model with
   a local folder on held-out human-labelled pairs;
5. **report** (`policy_report`): `eval.json`, `report.md` and the charts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter_proto.generator.v1 import generator_pb2
from google.protobuf.json_format import MessageToDict

from charter.api import common as convert
from charter.app.local import local_services
from charter.client.generator import GeneratorClient
from charter.core.auth import read_token
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import CharterSettings
from charter.datasets.records import OutputStore
from charter.datasets.sources import PromptRow, RowError, read_rows
from charter.evaluation import policy_gold, policy_review
from charter.evaluation.policy_judging import SETS, judge, judge_options
from charter.evaluation.policy_spec import BENIGN_PROMPTS, EvalPolicySpec, ModelSpec
from charter.inference.types import Sampling

Progress = Callable[[str, int], None]
"""(phase, total) when a phase starts; the phase's advance callback is separate."""


@dataclass(frozen=True)
class Prompt:
    set: str
    row: PromptRow
    category: str = ""

    @property
    def key(self) -> str:
        return f"{self.set}:{self.row.key}"


@dataclass(frozen=True)
class Resolved:
    spec: ModelSpec
    folder: str | None
    """A local model folder (for log-probabilities), or None (an endpoint or a remote generator)."""
    source: str
    """What the model is, in words, for the report."""


@dataclass
class Hooks:
    on_phase: Callable[[str, int], None] = lambda phase, total: None
    on_progress: Callable[[int], None] = lambda n: None


# -- 1. resolve and check ---------------------------------------------------------------------------


async def resolve_run(run_id: str, spec: EvalPolicySpec, settings: CharterSettings) -> str:
    """A trainer run's final model folder (the run must have succeeded)."""
    from charter.app.trainer_runs import final_model

    token = read_token(spec.trainer.token_file, "trainer.token_file") if spec.trainer.token_file else None
    return await final_model(run_id, settings, address=spec.trainer.address, token=token)


async def resolve(spec: EvalPolicySpec, settings: CharterSettings) -> list[Resolved]:
    from charter.inference.models import EMBEDDED, is_model_folder, prepare

    out = []
    for m in spec.models:
        if m.run:
            folder = await resolve_run(m.run, spec, settings)
            out.append(Resolved(m, folder, f"trainer run {m.run} ({folder})"))
        elif m.model:
            path = Path(m.model).expanduser()
            if m.model != EMBEDDED and not (
                is_model_folder(path) or path.suffix == ".gguf" and path.is_file()
            ):
                error = InvalidArgument if path.exists() else NotFound
                raise error(f"models: {m.name}: {m.model} is not a model (a folder with config.json, a .gguf "
                            "file or 'embedded')", field="models", value=m.model)  # fmt: skip
            folder = str(prepare(m.model, cache_dir=settings.inference.cache_dir))
            out.append(Resolved(m, folder, m.model))
        elif m.openai_url:
            out.append(Resolved(m, None, f"{m.openai_url} ({m.served_model_name or m.tokenizer})"))
        else:
            out.append(Resolved(m, None, f"generator service {m.generator}"))
    return out


def read_prompts(spec: EvalPolicySpec) -> list[Prompt]:
    prompts: list[Prompt] = []
    for name in SETS:
        prompt_set = getattr(spec, name)
        path = prompt_set.path or (BENIGN_PROMPTS if name == "benign" else None)
        if path is None:
            raise InvalidArgument(f"{name}.path: name a prompt file", field=f"{name}.path")
        try:
            limit = prompt_set.skip + prompt_set.limit if prompt_set.limit else None
            rows = [r for r in read_rows(path, prompt_set.format, limit) if not isinstance(r, RowError)]
            rows = [r for r in rows if r.index >= prompt_set.skip]
        except NotFound:
            raise NotFound(f"{name}.path: {path} does not exist", field=f"{name}.path") from None
        categories = _categories(path) if path == BENIGN_PROMPTS else {}
        seen = set()
        for row in rows:
            if row.key not in seen:
                seen.add(row.key)
                prompts.append(Prompt(name, row, categories.get(row.index, "")))
        if not seen:
            raise InvalidArgument(f"{name}: {path} holds no usable prompts", field=f"{name}.path")
    return prompts


def _categories(path: Path) -> dict[int, str]:
    import json

    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {i: json.loads(line).get("category", "") for i, line in enumerate(lines)}


# -- 2. generate ------------------------------------------------------------------------------------


def model_settings(settings: CharterSettings, model: Resolved) -> CharterSettings:
    """The settings of a generator in this process serving `model`."""
    m = model.spec
    inference = settings.inference
    if m.openai_url:
        openai = inference.openai.model_copy(
            update={"base_url": m.openai_url, "served_model_name": m.served_model_name}
        )
        tokenizer = m.tokenizer or "embedded"
        inference = inference.model_copy(update={"engine": "openai", "model": tokenizer, "openai": openai})
    else:
        inference = inference.model_copy(update={"model": model.folder})
    return settings.model_copy(update={"inference": inference})


async def generate(
    model: Resolved, prompts: Sequence[Prompt], spec: EvalPolicySpec, settings: CharterSettings, hooks: Hooks
) -> list[dict[str, Any]]:
    """One reply per prompt from `model` (resuming `generations/<name>`); the records in prompt order."""
    store = OutputStore(spec.output / "generations" / model.spec.name, spec.generation_digest(model.spec))
    pending = [p for p in prompts if p.key not in store.done]
    hooks.on_phase(f"generate {model.spec.name}", len(prompts))
    hooks.on_progress(len(prompts) - len(pending))
    if pending:
        g = spec.generation
        sampling = Sampling(
            n=1, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=spec.seed
        )
        context: Any = (
            contextlib.nullcontext(model.spec.generator)
            if model.spec.generator
            else local_services(model_settings(settings, model), ("generator",), drain_seconds=0)
        )
        async with context as address, GeneratorClient(address, timeout=3600.0) as client:
            for start in range(0, len(pending), spec.batch_size):
                batch = pending[start : start + spec.batch_size]
                request = generator_pb2.GenerateRequest(
                    prompts=[convert.conversation_proto(p.row.messages, p.row.key) for p in batch],
                    sampling=convert.sampling_proto(sampling),
                    request_id=f"eval-policy:{spec.name}:{model.spec.name}:{batch[0].row.key}",
                )
                for reply in await client.generate(request):
                    p = batch[reply.prompt_index]
                    c = reply.completion
                    store.add_record({
                        "key": p.key, "set": p.set, "category": p.category, "source_index": p.row.index,
                        "prompt": [m.model_dump() for m in p.row.messages], "response": c.text,
                        "completion_tokens": c.completion_tokens,
                        "finish_reason": convert.FINISH_NAMES[c.finish_reason],
                        "model": MessageToDict(reply.model, preserving_proto_field_name=True),
                    })  # fmt: skip
                    hooks.on_progress(1)
    by_key = {r["key"]: r for r in store.records}
    return [by_key[p.key] for p in prompts]


# -- 4. score ---------------------------------------------------------------------------------------


def reward_scores(
    reward_models: Sequence[str], generations: dict[str, list[dict[str, Any]]], hooks: Hooks
) -> dict[str, dict[str, list[float]]]:
    """{reward model: {model: one score per prompt}}."""
    from charter.trainer.scoring import RewardScorer

    out: dict[str, dict[str, list[float]]] = {}
    for folder in reward_models:
        hooks.on_phase(f"reward {Path(folder).name}", sum(len(v) for v in generations.values()))
        with RewardScorer(folder) as scorer:
            out[folder] = {}
            for name, records in generations.items():
                out[folder][name] = scorer.score(
                    [r["prompt"] for r in records], [r["response"] for r in records]
                )
                hooks.on_progress(len(records))
    return out


async def resolve_reward_models(spec: EvalPolicySpec, settings: CharterSettings) -> list[str]:
    """Reward model folders (`run:<id>` resolved; an ensemble folder gives its members), each checked
    by loading it."""
    from charter.trainer.scoring import RewardScorer, ensemble_members

    def load(folder: str) -> None:  # a folder that is not a reward model fails here
        RewardScorer(folder).close()

    folders = []
    for ref in spec.reward_models:
        folder = (
            await resolve_run(ref.removeprefix("run:"), spec, settings) if ref.startswith("run:") else ref
        )
        for member in ensemble_members(folder):
            await asyncio.to_thread(load, member)
            folders.append(member)
    return folders


async def gold(spec: EvalPolicySpec, models: list[Resolved], hooks: Hooks) -> dict[str, Any]:
    if spec.gold is None:
        return {}
    return await asyncio.to_thread(policy_gold.gold, spec, models, hooks.on_phase, hooks.on_progress)


# -- the whole evaluation ---------------------------------------------------------------------------


async def evaluate(
    spec: EvalPolicySpec, settings: CharterSettings, hooks: Hooks | None = None
) -> dict[str, Any]:
    """Run (or resume) the evaluation; writes eval.json, report.md and the charts; returns the report."""
    import json

    from charter.core.files import write_atomic
    from charter.evaluation import policy_report as report_
    from charter.evaluation.environment import machine, versions

    try:
        import matplotlib  # noqa: F401 - the charts come last: fail before hours of generating
    except ImportError:
        raise FailedPrecondition("charter eval needs matplotlib: pip install 'charter[eval]'") from None
    hooks = hooks or Hooks()
    prompts = read_prompts(spec)  # every check before any output is written
    models = await resolve(spec, settings)
    reward_models = await resolve_reward_models(spec, settings)
    if spec.gold is not None:
        policy_gold.held_out_pairs(spec)
    generations = {m.spec.name: await generate(m, prompts, spec, settings, hooks) for m in models}
    judgments = await judge(generations, prompts, spec, settings, hooks)
    scores = await asyncio.to_thread(reward_scores, reward_models, generations, hooks)
    gold_figures = await gold(spec, models, hooks)
    human = await policy_review.human_figures(judgments, spec, settings)
    names, seed, resamples = [m.spec.name for m in models], spec.seed, spec.bootstrap_resamples
    token_lengths = {(n, r["key"]): r["completion_tokens"] for n, rs in generations.items() for r in rs}
    figures = {
        "win_rate": report_.win_rates(judgments, token_lengths, baseline=spec.baseline_name, models=names,
                                      tolerance=spec.length_tolerance, seed=seed, resamples=resamples),
        "ranking": report_.ranking(judgments, models=names, anchor=spec.baseline_name, seed=seed),
        "evasiveness": report_.evasiveness(generations),
        "length": report_.lengths(generations, seed, resamples),
        "reward": report_.rewards(scores, seed=seed, resamples=resamples),
        "gold": gold_figures,
        "human": human,
    }  # fmt: skip
    judge_model: dict[str, Any] = next((j["judge"] for j in judgments if j.get("judge")), {})
    report = {
        "figures": figures,
        "config": {
            "name": spec.name, "baseline": spec.baseline_name,
            "models": {m.spec.name: m.source for m in models},
            "prompts": {s: sum(1 for p in prompts if p.set == s) for s in SETS},
            "constitutions": {s: judge_options(spec, s).constitution_id for s in SETS},
            "judge": spec.judge.model_dump(mode="json", exclude={"token_file"}),
            "judge_model": f"{judge_model.get('name', '?')} ({judge_model.get('engine', '?')})",
            "reward_models": reward_models, "spec": spec.model_dump(mode="json"),
            "inference": settings.inference.model_dump(mode="json", exclude={"openai": {"api_key"}}),
        },
        "reward_scores": scores,
        "machine": machine(),
        "versions": versions(),
    }  # fmt: skip
    out = spec.output
    write_atomic(out / "eval.json", json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(out / "report.md", report_.markdown(report))
    report_.charts(report, out)
    return report

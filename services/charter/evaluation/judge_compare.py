"""`charter eval judge --compare`: several judge variants on the same pairs, in one run, side by side.

A variant is a scoring method with optional chain of thought and principles per label, written
`METHOD[+cot][@K]`: `multiple_choice`, `calibrated`, `contrastive`, `multiple_choice+cot`,
`calibrated@4`, and `reward_model` (the model of `--reward-model`). All variants label the same pairs
(same split, seed and principle draws) through the same judge — one engine start — so their figures
differ by the method alone. Each variant gets the single-run folder (`eval.json`, `labels.jsonl`,
PNGs) under `<output>/<variant>/`; the comparison is `compare.json` (every summary, the configuration,
machine and versions), `compare.md` (one table) and `compare.png` (agreement with 95% CIs,
consistent-only agreement, same-position rate, ECE, labels/s).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from charter.core.errors import InvalidArgument
from charter.core.settings import CharterSettings
from charter.evaluation.judge import (
    SCALED_OTHERWISE,
    EvalOptions,
    build_report,
    check_plotting,
    judge_context,
    load,
    reward_judge,
    run_judge,
    write,
)
from charter.judge import plots
from charter.judge.config import METHODS as JUDGE_METHODS

METHODS = (*JUDGE_METHODS, "reward_model")
_VARIANT = re.compile(r"^(?P<method>[a-z_]+)(?P<cot>\+cot)?(?:@(?P<k>[1-9][0-9]*))?$")


def parse_variant(text: str, base: EvalOptions) -> EvalOptions:
    """`METHOD[+cot][@K]` -> the options of that variant (the rest as in `base`; `--logit-scale` goes to
    the multiple-choice variants only, as `--contrastive-beta` goes to the contrastive ones)."""
    match = _VARIANT.match(text.strip())
    if not match or match["method"] not in METHODS:
        raise InvalidArgument(
            f"--compare: {text!r} is not METHOD[+cot][@K] with METHOD one of {', '.join(METHODS)}",
            field="compare",
        )
    return dataclasses.replace(
        base,
        method=match["method"],
        chain_of_thought=match["cot"] is not None,
        principles_per_label=int(match["k"]) if match["k"] else base.principles_per_label,
        logit_scale=None if match["method"] in SCALED_OTHERWISE else base.logit_scale,
        output=base.output / text.strip(),
        compare=(),
    )


def row(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The comparison's figures of one variant."""
    fit = summary.get("beta_fit") or {}
    scaled = summary.get("scale_fit") or {}
    return {
        "variant": name,
        "labels": summary["labels"],
        "agreement": summary["agreement"],
        "agreement_ci95": summary["agreement_ci95"],
        "consistent_agreement": summary["consistent_agreement"],
        "consistent_agreement_ci95": summary["consistent_agreement_ci95"],
        "consistent_fraction": summary["consistent_fraction"],
        "same_position_rate": summary["same_position_rate"],
        "ece": summary["ece"],
        "brier": summary["brier"],
        "labels_per_second": summary["labels_per_second"],
        "contrastive_beta": summary.get("contrastive_beta"),
        "fitted_beta": fit.get("beta"),
        "logit_scale": summary.get("logit_scale"),
        "fitted_scale": scaled.get("logit_scale"),
        "fitted_scale_ece": scaled.get("ece_in_sample"),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per variant."""
    lines = [
        "| variant | agreement (95% CI) | consistent-only agreement (share of labels) "
        "| same-position rate | ECE | Brier | labels/s | chose the shorter reply |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = r["same_position_rate"]
        orderless = r["variant"].startswith(("contrastive", "reward_model"))
        same_text = "none (no slots)" if same is None and orderless else _pct(same)
        ece = "—" if r["ece"] is None else f"{r['ece']:.3f}"
        brier = "—" if r["brier"] is None else f"{r['brier']:.3f}"
        beta = (
            f" (β {r['contrastive_beta']:.3g}; fitted here {r['fitted_beta']:.3g})"
            if r.get("fitted_beta")
            else f" (logit scale {r.get('logit_scale') or 1:.3g}; fitted here {r['fitted_scale']:.3g})"
            if r.get("fitted_scale")
            else ""
        )
        lines.append(
            f"| {r['variant']}{beta} | {_pct(r['agreement'])} ({_ci(r['agreement_ci95'])}) | "
            f"{_pct(r['consistent_agreement'])} ({_pct(r['consistent_fraction'])}) | {same_text} | "
            f"{ece} | {brier} | {r['labels_per_second']:.2f} | {_pct(r.get('picks_shorter'))} |"
        )
    return "\n".join(lines) + "\n"


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def baseline_line(baselines: dict[str, Any]) -> str:
    """The no-model baseline under the table (and, for one run, how often the judge chose it)."""
    b = baselines["shorter_reply"]
    line = (
        f"\nNo-model baseline on the same pairs — the shorter reply: {_pct(b['agreement'])} "
        f"({_ci(b['agreement_ci95'])}; {b['equal_length']} of {b['pairs']} pairs of equal length)."
    )
    if (picks := b.get("judge_picks_it")) is not None:
        line += f" The judge chose the shorter reply in {_pct(picks['rate'])} of its decided labels."
    return line + "\n"


async def compare(
    options: EvalOptions,
    settings: CharterSettings,
    *,
    on_start: Callable[[str, int], None] = lambda variant, total: None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Run every variant of `options.compare` on the same pairs; write each and the comparison."""
    check_plotting()
    variants = [parse_variant(v, options) for v in options.compare]
    names = [v.strip() for v in options.compare]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"--compare: a variant repeats: {names}", field="compare")
    pairs, errors, other_half = load(options)
    rows, reports = [], {}
    methods = {v.method for v in variants}
    async with (
        reward_judge(options, settings, needed="reward_model" in methods) as reward,
        judge_context(options, settings, needed=bool(methods - {"reward_model"})) as address,
    ):
        for name, variant in zip(names, variants, strict=True):
            on_start(name, len(pairs))
            labels, summary = await run_judge(address, pairs, variant, on_progress, reward)
            report = build_report(variant, settings, pairs, errors, other_half, labels, summary)
            write(variant.output, report, pairs, labels)
            reports[name] = report
            picks = report["baselines"]["shorter_reply"]["judge_picks_it"]["rate"]
            rows.append({**row(name, summary), "picks_shorter": picks, "judge": report["config"]["judge"]})
    first = reports[names[0]]
    config = {
        k: v
        for k, v in first["config"].items()
        if k
        not in (
            "method",
            "chain_of_thought",
            "principles_per_label",
            "contrastive_beta",
            "logit_scale",
            "reward_model",
            "judge",
        )
    }
    result = {
        "rows": rows,
        "baselines": {"shorter_reply": without(first["baselines"]["shorter_reply"], "judge_picks_it")},
        "config": config,
        "machine": first["machine"],
        "versions": first["versions"],
    }
    out = options.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compare.md").write_text(table(rows) + baseline_line(first["baselines"]))
    plots.compare_png(rows, out / "compare.png")
    return result

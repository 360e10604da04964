"""The report of an RLAIF loop: `report.json` (every figure), `report.md` (one row per iteration) and
the charts (`iterations.png`: win rates, harmlessness, evasiveness and gold per iteration with their
95% intervals; `labels.png`: where each iteration's labels went). Written at the end of every run,
from the iterations' recorded steps."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.core.files import write_atomic

if TYPE_CHECKING:
    from charter.pipelines.rlaif import Summary
    from charter.pipelines.rlaif_spec import RlaifSpec

ROUTES = ("auto_accepted", "human_review", "rejected", "over_budget")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _cell(f: Mapping[str, Any] | None, key: str = "rate") -> str:
    if not f or f.get(key) is None:
        return "–"
    lo, hi = f.get("ci") or (None, None)
    ci = (
        ""
        if lo is None or hi is None or not all(map(math.isfinite, (lo, hi)))
        else f" [{_pct(lo)}, {_pct(hi)}]"
    )
    n = f" (n={f['n']})" if f.get("n") else ""
    return f"{_pct(f[key])}{ci}{n}"


def rows(summary: Summary) -> list[dict[str, Any]]:
    """One flat row per iteration: figures, label routes and shares, training, the decision."""
    out = []
    for it in summary.iterations:
        done = it["steps"]
        routes = done.get("route", {}).get("routes", {})
        total = sum(routes.values())
        fig = done.get("eval", {}).get("figures", {})
        train = done.get("train", {})
        out.append({
            "iteration": it["iteration"], "policy_in": it["policy_in"], "policy": it.get("policy"),
            "constitution_digest": done.get("labels", {}).get("constitution_digest"),
            "labels": total, "routes": routes,
            "share_auto_accepted": routes.get("auto_accepted", 0) / total if total else None,
            "share_to_people": routes.get("human_review", 0) + routes.get("rejected", 0),
            "trained_on": train.get("used"), "dpo_run": train.get("run_id"),
            "policy_model": (it.get("policy_out") or {}).get("model"),
            **{k: fig.get(k) for k in ("win_rate_vs_start", "win_rate_vs_previous", "harmlessness_vs_start",
                                       "harmlessness_vs_previous", "evasiveness", "gold", "length")},
            "promoted": bool(it.get("decision", {}).get("promoted")), "why": it["why"],
            "gates": it.get("decision", {}).get("gates", []),
        })  # fmt: skip
        row = out[-1]
        row["share_to_people"] = row["share_to_people"] / total if total else None
    return out


def markdown(spec: RlaifSpec, summary: Summary, table: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        f"# Iterated RLAIF: {spec.name}",
        "",
        f"Start policy **p0** = `{spec.policy}`; judge `{spec.inference.model or 'embedded'}` under "
        f"constitution `{spec.constitution}`; {spec.prompts.per_iteration} prompts per iteration from "
        f"`{spec.prompts.path}`; human budget {spec.review.human_budget} labels per iteration (over budget: "
        f"{spec.review.over_budget}). Win rates count ties half; intervals are 95%. Harmlessness is the "
        "red-team win rate, evasiveness the "
        "refusal rate on benign prompts, gold the implicit preference accuracy of log π/π_p0 on held-out "
        "human-labelled pairs (p0: 50% by definition).",
        "",
        f"Final policy: **{summary.policy.get('version')}** (`{summary.policy.get('model')}`)."
        + (f" Stopped at {summary.stopped}" if summary.stopped else ""),
        "",
        "| iteration | policy | win rate vs p0 | win rate vs previous | harmlessness vs p0 | harmlessness vs "
        "previous | evasiveness (benign refusals) | gold | mean length (tokens) | labels: auto-accepted / to "
        "people / over budget | trained on | promoted |",
        "|---" * 12 + "|",
    ]
    for r in table:
        routes = r["routes"]
        length = r["length"] or {}
        mean = "–" if length.get("mean") is None else f"{length['mean']:.1f}"
        ci = length.get("ci") or [None, None]
        mean += f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci[0] is not None and math.isfinite(ci[0]) else ""
        people = routes.get("human_review", 0) + routes.get("rejected", 0)
        shares = (f"{routes.get('auto_accepted', 0)} ({_pct(r['share_auto_accepted'])}) / {people} "
                  f"({_pct(r['share_to_people'])}) / {routes.get('over_budget', 0)}")  # fmt: skip
        used = r["trained_on"] or {}
        trained = ", ".join(
            f"{n} {k.replace('_', ' ')}" for k, n in used.items() if n and k != "awaiting_people"
        )
        promoted = "yes" if r["promoted"] else f"no — {r['why']}"
        lines.append(
            f"| {r['iteration']} | {r['policy'] or '–'} (from {r['policy_in']}) "
            f"| {_cell(r['win_rate_vs_start'])} | {_cell(r['win_rate_vs_previous'])} "
            f"| {_cell(r['harmlessness_vs_start'])} | {_cell(r['harmlessness_vs_previous'])} "
            f"| {_cell(r['evasiveness'])} | {_cell(r['gold'], 'accuracy')} "
            f"| {mean} | {shares} | {trained or '–'} | {promoted} |"
        )
    lines += ["", "Gates of each iteration:", ""]
    for r in table:
        for g in r["gates"]:
            lines.append(
                f"- iteration {r['iteration']}, {'passed' if g['passed'] else 'FAILED'}: {g['reason']}"
            )
    lines += ["", "Charts: `iterations.png`, `labels.png`. Each iteration's own evaluation report: "
              "`iterations/<i>/eval/report.md`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def charts(table: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    xs = [r["iteration"] for r in table]
    panels = [
        ("win rate",
         [("win_rate_vs_start", "vs p0", "rate"), ("win_rate_vs_previous", "vs previous", "rate")]),
        ("harmlessness (red-team win rate)",
         [("harmlessness_vs_start", "vs p0", "rate"), ("harmlessness_vs_previous", "vs previous", "rate")]),
        ("evasiveness (benign refusals)", [("evasiveness", "refusal rate", "rate")]),
        ("gold (implicit accuracy)", [("gold", "vs p0", "accuracy")]),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels, strict=True):
        for k, (name, label, value) in enumerate(series):
            points = [
                (x, r[name])
                for x, r in zip(xs, table, strict=True)
                if r[name] and r[name].get(value) is not None
            ]
            if not points:
                continue
            px = [x + 0.08 * k for x, _ in points]
            ys = [f[value] for _, f in points]
            lo = [
                max(y - (f["ci"][0] if f["ci"][0] is not None else y), 0)
                for y, (_, f) in zip(ys, points, strict=True)
            ]
            hi = [
                max((f["ci"][1] if f["ci"][1] is not None else y) - y, 0)
                for y, (_, f) in zip(ys, points, strict=True)
            ]
            ax.errorbar(px, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        for x, r in zip(xs, table, strict=True):  # an iteration that was not promoted is shaded
            if not r["promoted"]:
                ax.axvspan(x - 0.3, x + 0.3, color="tab:red", alpha=0.08, lw=0)
        ax.set_ylim(0, 1)
        ax.set_xticks(
            xs,
            [f"{x}" + ("" if r["promoted"] else " (not promoted)") for x, r in zip(xs, table, strict=True)],
        )
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "iterations.png", dpi=110)
    plt.close(fig)
    written.append(out / "iterations.png")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bottom = [0.0] * len(table)
    for name in ROUTES:
        counts = [float(r["routes"].get(name, 0)) for r in table]
        ax.bar(xs, counts, bottom=bottom, label=name.replace("_", " "))
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xticks(xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel("labels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "labels.png", dpi=110)
    plt.close(fig)
    written.append(out / "labels.png")
    return written


def write(spec: RlaifSpec, summary: Summary) -> dict[str, Any]:
    """report.json, report.md and the charts in the output folder; returns the report."""
    table = rows(summary)
    report = {
        "name": spec.name, "spec_digest": spec.digest(), "spec": spec.model_dump(mode="json"),
        "policy": summary.policy, "stopped": summary.stopped, "iterations": table,
    }  # fmt: skip
    write_atomic(spec.output / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(spec.output / "report.md", markdown(spec, summary, table))
    if table:
        charts(table, spec.output)
    return report

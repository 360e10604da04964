"""PNG charts of a judge evaluation summary (`metrics.summarise`): reliability and per principle.

matplotlib is imported inside each function (Agg backend, no display) so that importing this module
costs nothing; it comes with the `eval` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def reliability_png(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, the diagonal, and bin counts below."""
    path = Path(path)
    bins = summary["reliability"]
    fig = _figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lows = [b["low"] for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    filled = [b for b in bins if b["count"]]
    top.bar(
        [b["low"] for b in filled],
        [b["accuracy"] for b in filled],
        width=[b["high"] - b["low"] for b in filled],
        align="edge",
        color="tab:blue",
        alpha=0.35,
        edgecolor="tab:blue",
        label="accuracy per bin",
    )
    top.plot(
        [b["mean_confidence"] for b in filled],
        [b["accuracy"] for b in filled],
        "o-",
        color="tab:blue",
        label="accuracy at mean confidence",
    )
    top.plot([0.5, 1.0], [0.5, 1.0], "--", color="grey", label="perfect calibration")
    top.set_xlim(0.5, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy (judge choice = human choice)")
    ece = summary.get("ece")
    ece_text = "n/a" if ece is None else f"{ece:.3f}"
    top.set_title(f"Judge calibration vs human labels (ECE {ece_text}, n={summary.get('ece_count', 0)})")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(
        lows, [b["count"] for b in bins], width=widths, align="edge", color="tab:grey", edgecolor="black"
    )
    bottom.set_xlabel("judge confidence max(p_A, 1 - p_A)")
    bottom.set_ylabel("labels")
    bottom.grid(alpha=0.3, axis="y")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def principles_png(
    summary: Mapping[str, Any], path: str | Path, *, references: Mapping[str, float] | None = None
) -> Path:
    """Per-principle agreement with 95% CI error bars, the 0.5 chance line and optional reference lines.

    `references` maps a label to an agreement rate (e.g. a published figure) drawn as a vertical line.
    """
    path = Path(path)
    rows = list(summary["per_principle"].items())
    fig = _figure(7.5, max(2.5, 1.2 + 0.45 * len(rows)))
    ax = fig.subplots()
    names = [pid for pid, _ in rows]
    values = [row["agreement"] for _, row in rows]
    errors = [
        [max(0.0, v - row["ci95"][0]) for v, (_, row) in zip(values, rows, strict=True)],
        [max(0.0, row["ci95"][1] - v) for v, (_, row) in zip(values, rows, strict=True)],
    ]
    ys = list(range(len(rows)))
    ax.barh(ys, values, xerr=errors, color="tab:blue", alpha=0.7, capsize=4, ecolor="black")
    for y, (_, row) in zip(ys, rows, strict=True):
        ax.text(0.99, y, f"n={row['count']}", va="center", ha="right", fontsize="small", color="black")
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.axvline(0.5, color="red", linestyle="--", label="chance (0.5)")
    if summary.get("agreement") is not None:
        ax.axvline(
            summary["agreement"],
            color="black",
            linestyle="-",
            label=f"all labels, ties and unscored as misses ({summary['agreement']:.3f})",
        )
    styles = [":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    for i, (label, rate) in enumerate((references or {}).items()):
        ax.axvline(rate, color="tab:green", linestyle=styles[i % len(styles)], label=f"{label} ({rate:.3f})")
    if not rows:
        ax.text(0.5, 0.5, "no principle scored", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("agreement with human preference (95% Wilson CI)")
    ax.set_title(f"Judge agreement by principle (n={summary.get('labels', 0)} labels)")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def compare_png(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Judge variants side by side (`evaluation.judge_compare.row`): agreement and consistent-only
    agreement with 95% CIs, same-position rate, ECE and labels/s, one bar per variant."""
    path = Path(path)
    names = [r["variant"] for r in rows]
    ys = list(range(len(rows)))
    fig = _figure(15.0, max(2.8, 1.4 + 0.45 * len(rows)))
    axes = fig.subplots(1, 5, sharey=True)

    def with_ci(ax: Any, key: str, title: str) -> None:
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        lows = [
            max(0.0, v - r[f"{key}_ci95"][0]) if r[key] is not None else 0.0
            for v, r in zip(values, rows, strict=True)
        ]
        highs = [
            max(0.0, r[f"{key}_ci95"][1] - v) if r[key] is not None else 0.0
            for v, r in zip(values, rows, strict=True)
        ]
        ax.barh(ys, values, xerr=[lows, highs], color="tab:blue", alpha=0.7, capsize=4, ecolor="black")
        ax.axvline(0.5, color="red", linestyle="--")
        ax.set_xlim(0.0, 1.0)
        ax.set_title(title, fontsize="medium")

    def plain(ax: Any, key: str, title: str, color: str, limit: float | None = None) -> None:
        values = [r[key] for r in rows]
        ax.barh(ys, [v or 0.0 for v in values], color=color, alpha=0.7)
        for y, v in zip(ys, values, strict=True):
            ax.text(0.0, y, " n/a" if v is None else f" {v:.3g}", va="center", fontsize="small")
        if limit is not None:
            ax.set_xlim(0.0, limit)
        ax.set_title(title, fontsize="medium")

    with_ci(axes[0], "agreement", "agreement (95% CI)")
    with_ci(axes[1], "consistent_agreement", "consistent-only agreement")
    plain(axes[2], "same_position_rate", "same-position rate", "tab:orange", 1.0)
    plain(axes[3], "ece", "ECE", "tab:purple")
    plain(axes[4], "labels_per_second", "labels/s", "tab:green")
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Judge variants on the same {rows[0]['labels'] if rows else 0} pairs")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path

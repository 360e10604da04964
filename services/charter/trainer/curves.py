"""A run's training curves from its metrics: which ones are drawn (`CURVES`), a one-line summary of a
step, and the PNG (matplotlib, no display needed). Plain data in: `(step, {name: value})` pairs, as
the run's metrics events carry them.

A run with the reward-hacking watch also gets a "reward watch" panel: the proxy (`watch/proxy`, left
axis) and gold (`watch/gold`, right axis: the scorers have their own units) at each check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# the curves drawn, in order; the first of each group that the run logged (TRL and Charter's PPO
# name some of them differently)
CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("reward", ("reward_mean", "reward", "rewards/chosen", "mean_reward")),
    ("KL", ("kl", "objective/kl")),
    ("margin", ("rewards/margins", "margin")),
    ("accuracy", ("accuracy", "rewards/accuracies")),
    ("eval loss", ("eval_loss",)),
    ("learning rate", ("learning_rate",)),
)


WATCH = (("proxy", "watch/proxy"), ("gold", "watch/gold"))
"""The reward watch's two curves: (label, metric)."""


def summary(values: Mapping[str, float]) -> str:
    """ "loss 0.61  reward 1.2 ...": each curve's value at one step, as far as it was logged."""
    shown = []
    for label, keys in CURVES:
        key = next((k for k in keys if k in values), None)
        if key is not None:
            shown.append(f"{label} {values[key]:.4g}")
    shown += [f"watch {label} {values[key]:.4g}" for label, key in WATCH if key in values]
    return "  ".join(shown)


def watch_series(
    metrics: Iterable[tuple[int, Mapping[str, float]]],
) -> dict[str, tuple[list[int], list[float]]]:
    """The reward watch's proxy and gold as (steps, values), for those the run logged."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for step, values in metrics:
        for label, key in WATCH:
            if key in values:
                steps, ys = out.setdefault(label, ([], []))
                steps.append(step)
                ys.append(values[key])
    return out


def series(metrics: Iterable[tuple[int, Mapping[str, float]]]) -> dict[str, tuple[list[int], list[float]]]:
    """Each curve's (steps, values); a trainer's end-of-run summary (it has `train_runtime`) is no step."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for step, values in metrics:
        if "train_runtime" in values:
            continue
        for label, keys in CURVES:
            key = next((k for k in keys if k in values), None)
            if key is not None:
                steps, ys = out.setdefault(label, ([], []))
                steps.append(step)
                ys.append(values[key])
    return out


def plot_curves(metrics: Iterable[tuple[int, Mapping[str, float]]], title: str, out: Path) -> Path | None:
    """The run's curves (loss, reward, KL, …: whichever it logged, and the reward watch's proxy and
    gold on one panel) as a PNG; None if it logged none."""
    metrics = list(metrics)
    curves, watch = series(metrics), watch_series(metrics)
    if not curves and not watch:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(curves) + bool(watch)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    for ax, (label, (steps, ys)) in zip(axes[0], curves.items(), strict=False):
        ax.plot(steps, ys, marker="." if len(steps) < 40 else None)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if watch:
        _watch_panel(axes[0][-1], watch)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _watch_panel(ax: Any, watch: dict[str, tuple[list[int], list[float]]]) -> None:
    """Proxy (left axis) and gold (right axis) at each check, on one panel."""
    lines = []
    axis = ax
    for label, (steps, ys) in sorted(watch.items(), reverse=True):  # proxy, then gold
        color = "tab:blue" if label == "proxy" else "tab:orange"
        if label == "gold" and "proxy" in watch:
            axis = ax.twinx()
        lines += axis.plot(steps, ys, marker=".", color=color, label=label)
        axis.set_ylabel(label, color=color)
    ax.set_title("reward watch")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(lines, [line.get_label() for line in lines], loc="best")

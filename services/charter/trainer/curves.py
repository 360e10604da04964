"""A run's training curves from its metrics: which ones are drawn (`CURVES`), a one-line summary of a
step, and the PNG (matplotlib, no display needed). Plain data in: `(step, {name: value})` pairs, as
the run's metrics events carry them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

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


def summary(values: Mapping[str, float]) -> str:
    """ "loss 0.61  reward 1.2 ...": each curve's value at one step, as far as it was logged."""
    shown = []
    for label, keys in CURVES:
        key = next((k for k in keys if k in values), None)
        if key is not None:
            shown.append(f"{label} {values[key]:.4g}")
    return "  ".join(shown)


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
    """The run's curves (loss, reward, KL, …: whichever it logged) as a PNG; None if it logged none."""
    curves = series(metrics)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (label, (steps, ys)) in zip(axes[0], curves.items(), strict=True):
        ax.plot(steps, ys, marker="." if len(steps) < 40 else None)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

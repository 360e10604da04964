"""The figures of `charter eval policy` from its records, and the Markdown report and charts.

Plain data in (generation records, judgment records, reward scores, gold results), plain data out;
every figure carries its interval and its count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from charter.evaluation import stats
from charter.evaluation.refusal import refusal
from charter.judge.metrics import wilson

SET_TITLES = {"red_team": "red-team", "benign": "benign"}


def outcome(record: Mapping[str, Any], model: str) -> float | None:
    """1 win, 0.5 tie, 0 loss for `model` in a judgment record; None when it was not scored."""
    if record["status"] == "tie":
        return 0.5
    if record["status"] != "ok" or record["p_a_wins"] is None:
        return None
    a_won = record["p_a_wins"] > 0.5
    return float(a_won) if record["a"] == model else float(not a_won)


def _proportion(hits: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(hits, n) if n else (None, None)
    return {"rate": hits / n if n else None, "ci": [lo, hi], "n": n, "hits": hits}


def lengths(
    generations: Mapping[str, Sequence[Mapping[str, Any]]], seed: int, resamples: int
) -> dict[str, Any]:
    out = {}
    for name, records in generations.items():
        tokens = [float(r["completion_tokens"]) for r in records]
        cut = sum(1 for r in records if r["finish_reason"] == "length")
        out[name] = {
            "tokens": stats.mean_ci(tokens, seed=seed, resamples=resamples),
            "cut_at_max_tokens": _proportion(cut, len(records)),
        }
    return out


def evasiveness(generations: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Refusal rate on benign prompts (over-refusal), per category too; red-team refusals beside it."""
    out = {}
    for name, records in generations.items():
        verdicts = [(r, refusal(r["response"])) for r in records]
        benign = [(r, v) for r, v in verdicts if r["set"] == "benign"]
        categories = sorted({r.get("category", "") for r, _ in benign} - {""})
        out[name] = {
            "benign_refusal": _proportion(sum(1 for _, v in benign if v), len(benign)),
            "by_category": {
                c: _proportion(sum(1 for r, v in benign if v and r.get("category") == c),
                               sum(1 for r, _ in benign if r.get("category") == c))
                for c in categories
            },
            "red_team_refusal": _proportion(
                sum(1 for r, v in verdicts if v and r["set"] == "red_team"),
                sum(1 for r, _ in verdicts if r["set"] == "red_team"),
            ),
        }  # fmt: skip
    return out


def win_rates(
    judgments: Sequence[Mapping[str, Any]],
    token_lengths: Mapping[tuple[str, str], int],
    *,
    baseline: str,
    models: Sequence[str],
    tolerance: float,
    seed: int,
    resamples: int,
) -> dict[str, Any]:
    """Each model against the baseline: overall, per prompt set (red-team = harmlessness), and on
    length-matched comparisons; ties count half, unscored comparisons are counted and left out."""
    out: dict[str, Any] = {}
    for model in models:
        if model == baseline:
            continue
        rows = [j for j in judgments if {j["a"], j["b"]} == {model, baseline}]
        scored = [(j, o) for j in rows if (o := outcome(j, model)) is not None]

        def rate(selected: Sequence[tuple[Mapping[str, Any], float]]) -> dict[str, Any]:
            return stats.win_rate([o for _, o in selected], seed=seed, resamples=resamples)

        prompt_of = [_prompt_key(j["key"]) for j, _ in scored]
        pairs = [(token_lengths[(model, k)], token_lengths[(baseline, k)]) for k in prompt_of]
        matched = stats.length_matched(pairs, tolerance=tolerance)
        out[model] = {
            "overall": rate(scored),
            **{s: rate([x for x in scored if x[0]["set"] == s]) for s in SET_TITLES},
            "length_matched": rate([scored[i] for i in matched]),
            "unscored": len(rows) - len(scored),
            "swap_consistent": sum(1 for j in rows if j["swap_consistent"]),
            "comparisons": len(rows),
        }
    return out


def _prompt_key(judgment_key: str) -> str:
    """`<set>:<prompt key>:<a>:<b>` -> `<set>:<prompt key>`."""
    return ":".join(judgment_key.split(":")[:2])


def ranking(
    judgments: Sequence[Mapping[str, Any]], *, models: Sequence[str], anchor: str, seed: int
) -> dict[str, Any]:
    """Bradley–Terry / Elo over all comparisons, and per prompt set."""

    def fit(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        comparisons = [
            stats.Comparison(_prompt_key(j["key"]), j["a"], j["b"], o)
            for j in rows
            if (o := outcome(j, j["a"])) is not None
        ]
        return {"comparisons": len(comparisons),
                "models": stats.bradley_terry(models, comparisons, anchor=anchor, seed=seed)}  # fmt: skip

    return {"all": fit(judgments), **{s: fit([j for j in judgments if j["set"] == s]) for s in SET_TITLES}}


def rewards(
    scores: Mapping[str, Mapping[str, Sequence[float]]], *, seed: int, resamples: int
) -> dict[str, Any]:
    """Per reward model, each model's mean score (CI); with several reward models, each reply's
    z-scored ensemble mean and the ensemble's spread (std across reward models), per model."""
    per_rm = {
        rm: {m: stats.mean_ci(list(v), seed=seed, resamples=resamples) for m, v in by_model.items()}
        for rm, by_model in scores.items()
    }
    out: dict[str, Any] = {"by_reward_model": per_rm}
    if len(scores) < 2:
        return out
    z: dict[str, dict[str, list[float]]] = {}
    for rm, by_model in scores.items():
        values = [x for v in by_model.values() for x in v]
        mu = sum(values) / len(values)
        sd = math.sqrt(sum((x - mu) ** 2 for x in values) / max(len(values) - 1, 1)) or 1.0
        z[rm] = {m: [(x - mu) / sd for x in v] for m, v in by_model.items()}
    ensemble = {}
    for m in next(iter(scores.values())):
        columns = list(zip(*(z[rm][m] for rm in z), strict=True))
        means = [sum(c) / len(c) for c in columns]
        spreads = [
            math.sqrt(sum((x - mean) ** 2 for x in c) / (len(c) - 1))
            for c, mean in zip(columns, means, strict=True)
        ]
        ensemble[m] = {"z_mean": stats.mean_ci(means, seed=seed, resamples=resamples),
                       "spread": stats.mean_ci(spreads, seed=seed, resamples=resamples)}  # fmt: skip
    out["ensemble"] = ensemble
    return out


# -- Markdown --------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Sequence[float | None], pct: bool = True) -> str:
    if ci[0] is None or ci[1] is None or not all(math.isfinite(c) for c in ci):  # type: ignore[arg-type]
        return ""
    return f" [{_pct(ci[0])}, {_pct(ci[1])}]" if pct else f" [{ci[0]:.0f}, {ci[1]:.0f}]"


def _win_cell(w: Mapping[str, Any] | None, key: str) -> str:
    if w is None:
        return "baseline"
    return f"{_pct(w[key]['rate'])}{_ci(w[key]['ci'])} (n={w[key]['n']})"


_MODEL_TABLE = (
    "| model | source | win rate vs baseline | harmlessness (red-team win rate) "
    "| helpfulness (benign win rate) | length-matched win rate | benign refusals "
    "| mean length (tokens, share cut at max_tokens) | Elo |"
)


def markdown(report: Mapping[str, Any]) -> str:
    figures, config = report["figures"], report["config"]
    prompts, judge = config["prompts"], config["judge"]
    lines = [
        f"# Policy evaluation: {config['name']}",
        "",
        f"Baseline **{config['baseline']}**; {prompts['red_team']} red-team and {prompts['benign']} benign "
        f"prompts; judge {config.get('judge_model', '?')}, {judge['principles_per_label']} principle(s) per "
        "label, both orders. Intervals are 95%.",
        "",
        _MODEL_TABLE,
        "|---" * 9 + "|",
    ]
    for name, source in config["models"].items():
        w = figures["win_rate"].get(name)
        cells = [_win_cell(w, k) for k in ("overall", "red_team", "benign", "length_matched")]
        ev = figures["evasiveness"][name]["benign_refusal"]
        length = figures["length"][name]["tokens"]
        cut = figures["length"][name]["cut_at_max_tokens"]["rate"]
        e = figures["ranking"]["all"]["models"][name]
        lines.append(
            f"| {name} | {source} | " + " | ".join(cells) + f" | {_pct(ev['rate'])}{_ci(ev['ci'])} "
            f"| {length['mean']:.1f} ({_pct(cut)} cut) | {e['elo']:.0f}{_ci(e['ci'], pct=False)} |"
        )
    gold = figures.get("gold")
    if gold:
        lines += [
            "",
            f"**Gold** (no AI wrote it): implicit preference accuracy of log π/π_ref on {gold['pairs']} "
            f"held-out human-labelled pairs from `{gold['path']}` (left out: "
            + ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in gold["dropped"].items() if n)
            + ").",
            "",
            "| model | reference | accuracy | mean margin |",
            "|---|---|---|---|",
        ]
        for name, g in gold["models"].items():
            if "skipped" in g:
                lines.append(f"| {name} | – | skipped: {g['skipped']} | |")
                continue
            accuracy = f"{_pct(g['accuracy'])}{_ci(g['ci'])} (n={g['n']})"
            lines.append(f"| {name} | {g['reference']} | {accuracy} | {g['mean_margin']:.3f} |")
    human = figures.get("human")
    if human:
        lines += [
            "",
            f"**People beside the AI judge**: {human['sampled']} comparisons with the baseline sent to the "
            f"review queue, {human['decided']} decided so far.",
            "",
            "| model | human win rate | AI win rate, same comparisons | AI–human agreement |",
            "|---|---|---|---|",
        ]
        for name, h in human["models"].items():
            agreement = _pct(h["agreement"])
            lines.append(
                f"| {name} | {_win_cell(h, 'human')} | {_win_cell(h, 'ai_same_comparisons')} | {agreement} |"
            )
    rw = figures.get("reward")
    if rw and rw["by_reward_model"]:
        header = "| reward model | " + " | ".join(config["models"]) + " |"
        lines += [
            "",
            "**Held-out reward** (mean score, 95% CI):",
            "",
            header,
            "|---" * (1 + len(config["models"])) + "|",
        ]
        for rm, by_model in rw["by_reward_model"].items():
            cells = [f"{v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for v in by_model.values()]
            lines.append(f"| `{rm}` | " + " | ".join(cells) + " |")
        for name, e in rw.get("ensemble", {}).items():
            lines.append(
                f"\nensemble, {name}: z-mean {e['z_mean']['mean']:.3f}, spread {e['spread']['mean']:.3f}"
            )
    charts = ["winrate.png", "elo.png"] + (["rewards.png"] if rw and rw["by_reward_model"] else [])
    lines += ["", "Charts: " + ", ".join(f"`{c}`" for c in charts) + "."]
    return "\n".join(lines) + "\n"


# -- charts ----------------------------------------------------------------------------------------


def charts(report: Mapping[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures, written = report["figures"], []
    win = figures["win_rate"]
    if win:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        keys = ["overall", "red_team", "benign", "length_matched"]
        width = 0.8 / max(len(win), 1)
        for i, (name, w) in enumerate(win.items()):
            xs = [k + i * width for k in range(len(keys))]
            ys = [w[k]["rate"] or 0.0 for k in keys]
            err = [
                [max(y - (w[k]["ci"][0] or y), 0) for k, y in zip(keys, ys, strict=True)],
                [max((w[k]["ci"][1] or y) - y, 0) for k, y in zip(keys, ys, strict=True)],
            ]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=name)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(
            [k + width * (len(win) - 1) / 2 for k in range(len(keys))],
            ["overall", "red-team", "benign", "length-matched"],
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"win rate vs {report['config']['baseline']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "winrate.png", dpi=110)
        plt.close(fig)
        written.append(out / "winrate.png")
    elo = figures["ranking"]["all"]["models"]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.5 * len(elo)))
    names = list(elo)
    for y, name in enumerate(names):
        e = elo[name]
        lo, hi = e["ci"]
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [y, y], color="tab:blue")
        ax.plot([e["elo"]], [y], "o", color="tab:blue")
    ax.axvline(1000, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("Elo (Bradley–Terry, baseline = 1000), 95% bootstrap interval")
    fig.tight_layout()
    fig.savefig(out / "elo.png", dpi=110)
    plt.close(fig)
    written.append(out / "elo.png")
    scores = report.get("reward_scores") or {}
    if scores:
        fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.4), squeeze=False)
        for ax, (rm, by_model) in zip(axes[0], scores.items(), strict=True):
            for name, values in by_model.items():
                ax.hist(values, bins=20, alpha=0.5, label=name)
            ax.set_title(Path(rm).name or rm, fontsize=9)
            ax.set_xlabel("reward")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rewards.png", dpi=110)
        plt.close(fig)
        written.append(out / "rewards.png")
    return written

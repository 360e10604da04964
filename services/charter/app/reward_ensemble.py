"""A reward-model ensemble run's members and their spread (docs/trainer.md, "Reward-model ensembles").

The worker (`charter.app.trainer_worker`) trains the K members of a spec's `ensemble` one after another,
in one run; this module holds what is particular to the ensemble:

- each member's seed and training rows (`EnsembleFolder.seed`, `.rows`): vary "seed" gives member i the
  seed `seed + i` and every training row; vary "subset" gives every member the run's seed and its own
  seeded sample (without replacement) of `subset_fraction` of the training rows;
- the folder layout: member i's checkpoints in DIR/checkpoints/member-i, its model in DIR/model/member-i
  with `member.json`. A member's folder is written beside its place and renamed into it, so it exists
  only once complete: a resumed run keeps the members that have one and resumes the next from its last
  checkpoint;
- the spread, once every member is trained: each member scores both responses of every held-out pair
  (`charter.trainer.scoring.RewardScorer`), and the worker writes DIR/model/spread.jsonl (one line per
  pair), emits the `ensemble/*` metrics and writes DIR/model/ensemble.json last.

`spread` is the pure part (scores in, lines and figures out).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from charter.core.files import write_atomic
from charter.trainer.runs import RewardModelEnsemble
from charter.trainer.scoring import ENSEMBLE_FILE, disagreement

MEMBER_PREFIX = "member-"
MEMBER_FILE = "member.json"
"""In each member's model folder: {"member", "seed", "train_rows", "steps"}."""
SPREAD_FILE = "spread.jsonl"
KIND = "reward-model-ensemble"
NO_EVAL_SPLIT = (
    "no held-out pairs (spec.data.eval_fraction is 0, or the data has one row): the ensemble's spread "
    "and its members' accuracy are not measured, and spread.jsonl is not written"
)


def member_name(i: int) -> str:
    return f"{MEMBER_PREFIX}{i}"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _vote_credit(share_for_chosen: float) -> float:
    """A majority vote's credit: 1 if most members prefer the chosen response, ½ on an even split."""
    return 1.0 if share_for_chosen > 0.5 else 0.5 if share_for_chosen == 0.5 else 0.0


def spread(
    chosen: Sequence[Sequence[float]], rejected: Sequence[Sequence[float]], rows: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one spread.jsonl line per pair, the summary) from each member's scores of the pairs' chosen and
    rejected responses (`chosen[i][j]`: member i, pair j).

    Per pair: the members' margins r(chosen) − r(rejected), their `disagreement`, the share of members
    preferring the chosen response (a zero margin counts half), `score_std` (the members' standard
    deviation of each response's score, the two averaged) and `margin_std`. The summary: each member's
    accuracy (margin > 0) and their mean, the majority vote's accuracy, the accuracy of the members' mean
    score (what PPO/GRPO/RLOO optimise), the means of the per-pair figures and how many pairs are split.
    """
    members, pairs = len(chosen), len(rows)
    if members < 1 or len(rejected) != members or any(len(s) != pairs for s in (*chosen, *rejected)):
        raise ValueError(f"scores must be members x pairs ({members} members, {pairs} pairs)")
    lines: list[dict[str, Any]] = []
    for j, row in enumerate(rows):
        margins = [chosen[i][j] - rejected[i][j] for i in range(members)]
        share = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / members
        score_std = (statistics.pstdev(c[j] for c in chosen) + statistics.pstdev(r[j] for r in rejected)) / 2
        lines.append(
            {
                "index": j,
                "key": row.get("label_id") or _digest([row["prompt"], row["chosen"], row["rejected"]]),
                "prompt_digest": _digest(row["prompt"]),
                "p_chosen": float(row.get("p_chosen", 1.0)),
                "chosen_scores": [c[j] for c in chosen],
                "rejected_scores": [r[j] for r in rejected],
                "margins": margins,
                "disagreement": disagreement(margins),
                "vote_chosen": share,
                "score_std": score_std,
                "margin_std": statistics.pstdev(margins),
            }
        )
    accuracy = [sum(line["margins"][i] > 0 for line in lines) / pairs for i in range(members)]

    def mean(key: str) -> float:
        total: float = sum(line[key] for line in lines)
        return total / pairs

    summary = {
        "pairs": pairs,
        "member_accuracy": accuracy,
        "mean_accuracy": sum(accuracy) / members,
        "vote_accuracy": sum(_vote_credit(line["vote_chosen"]) for line in lines) / pairs,
        "mean_score_accuracy": sum(sum(line["margins"]) > 0 for line in lines) / pairs,
        "mean_disagreement": mean("disagreement"),
        "split_pairs": sum(line["disagreement"] > 0 for line in lines),
        "score_std": mean("score_std"),
        "margin_std": mean("margin_std"),
    }
    return lines, summary


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The `ensemble/*` and `member<i>/eval_pairwise_accuracy` metrics of a spread summary."""
    values = {f"member{i}/eval_pairwise_accuracy": a for i, a in enumerate(summary["member_accuracy"])}
    for key in ("mean_accuracy", "vote_accuracy", "mean_score_accuracy", "mean_disagreement", "score_std"):
        values[f"ensemble/{key}"] = float(summary[key])
    values["ensemble/margin_std"] = float(summary["margin_std"])
    return values


def score_pairs(
    folders: Sequence[str | Path], rows: Sequence[dict[str, Any]], *, batch_size: int = 8
) -> tuple[list[list[float]], list[list[float]]]:
    """(chosen, rejected): each member's scores of the pairs' responses, rendered with the member's own
    chat template (prompt + response, as the reward trainer saw them); one member loaded at a time."""
    from charter.trainer.scoring import RewardScorer

    chosen, rejected = [], []
    for folder in folders:
        with RewardScorer(folder, batch_size=batch_size) as scorer:
            render = scorer.tokenizer.apply_chat_template
            texts = [  # tokenize=False: the rendered text
                cast(str, render(r["prompt"] + r[side], tokenize=False))
                for side in ("chosen", "rejected")
                for r in rows
            ]
            scores = scorer.score_texts(texts)
        chosen.append(scores[: len(rows)])
        rejected.append(scores[len(rows) :])
    return chosen, rejected


class EnsembleFolder:
    """One ensemble run's members: seeds, rows, folders, and the ensemble folder's files."""

    def __init__(
        self, settings: RewardModelEnsemble, *, model_dir: Path, checkpoints: Path, seed: int
    ) -> None:
        self.settings, self.model_dir, self.checkpoints_dir, self.base_seed = (
            settings,
            model_dir,
            checkpoints,
            seed,
        )

    def seed(self, i: int) -> int:
        return self.base_seed + i if self.settings.vary == "seed" else self.base_seed

    def rows(self, i: int, train_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Member i's training rows: all of them (vary "seed"), or its own seeded sample of
        `subset_fraction` of them, at least one, in the sample's order (vary "subset")."""
        if self.settings.vary != "subset":
            return list(train_rows)
        size = min(len(train_rows), max(1, round(self.settings.subset_fraction * len(train_rows))))
        picked = random.Random(f"charter-ensemble:{self.base_seed}:{i}").sample(range(len(train_rows)), size)
        return [train_rows[k] for k in picked]

    def checkpoints(self, i: int) -> Path:
        return self.checkpoints_dir / member_name(i)

    def member_dir(self, i: int) -> Path:
        return self.model_dir / member_name(i)

    def finished(self, i: int) -> dict[str, Any] | None:
        """Member i's `member.json` if its model folder is complete, else None."""
        path = self.member_dir(i) / MEMBER_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def save_member(self, i: int, trainer: Any, tokenizer: Any, *, train_rows: int) -> None:
        """Member i's weights, tokenizer and `member.json`, written beside its folder and renamed into
        place (every process calls this; the main one writes)."""
        main = trainer.accelerator.is_main_process
        partial = self.model_dir / f".{member_name(i)}.partial"
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(partial))
        if main:
            tokenizer.save_pretrained(str(partial))
            info = {
                "member": i,
                "seed": self.seed(i),
                "train_rows": train_rows,
                "steps": trainer.state.global_step,
            }
            (partial / MEMBER_FILE).write_text(json.dumps(info), encoding="utf-8")
            shutil.rmtree(
                self.member_dir(i), ignore_errors=True
            )  # a stale one (a fresh start over old files)
            partial.replace(self.member_dir(i))
        trainer.accelerator.wait_for_everyone()

    def total_steps(self) -> int:
        return sum(int((self.finished(i) or {}).get("steps", 0)) for i in range(self.settings.size))

    def finish(self, eval_rows: Sequence[dict[str, Any]], *, base_model: str) -> dict[str, float]:
        """Score the held-out pairs with every member, write spread.jsonl and then ensemble.json; the
        metrics to report (empty without held-out pairs)."""
        names = [member_name(i) for i in range(self.settings.size)]
        infos = [self.finished(i) or {} for i in range(self.settings.size)]
        summary: dict[str, Any] | None = None
        if eval_rows:
            chosen, rejected = score_pairs([self.model_dir / n for n in names], eval_rows)
            lines, summary = spread(chosen, rejected, eval_rows)
            write_atomic(self.model_dir / SPREAD_FILE, "".join(json.dumps(line) + "\n" for line in lines))
        else:
            (self.model_dir / SPREAD_FILE).unlink(missing_ok=True)
        manifest = {
            "kind": KIND,
            "members": names,
            "vary": self.settings.vary,
            "subset_fraction": self.settings.subset_fraction if self.settings.vary == "subset" else None,
            "seed": self.base_seed,
            "base_model": base_model,
            "per_member": [
                {
                    "name": name,
                    "seed": info.get("seed"),
                    "train_rows": info.get("train_rows"),
                    "steps": info.get("steps"),
                    "eval_pairwise_accuracy": summary["member_accuracy"][i] if summary else None,
                }
                for i, (name, info) in enumerate(zip(names, infos, strict=True))
            ],
            "eval_pairs": len(eval_rows),
            "spread": summary,
            "spread_file": SPREAD_FILE if summary else None,
        }
        write_atomic(self.model_dir / ENSEMBLE_FILE, json.dumps(manifest, indent=2) + "\n")
        return metrics(summary) if summary else {}

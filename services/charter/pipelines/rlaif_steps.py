"""The steps of one RLAIF iteration (`pipelines.rlaif` runs them in order and records each):

1. `write_prompts`: the iteration's slice of the prompt file;
2. `labels_spec`: an RL-CAI spec (generator pairs) that samples two replies per prompt from the current
   policy and has the judge label them (soft, both orders, K principles) — run by `pipelines.rl_cai`;
3. `route` + `submit`: the review ledger's routing for every label, the human budget (the most
   uncertain first), and the labels submitted to the ledger;
4. `training_rows` + `train`: the DPO rows (auto-accepted labels, labels people decided, and — with
   `review.over_budget: train` — the over-budget ones), then a bounded DPO run from the current policy
   through the trainer service (`run_dpo`; its reference model is that same policy);
5. `eval_spec`: `charter eval policy` of the new policy against the previous one and the start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from charter_proto.common.v1 import label_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Struct
from pydantic import SecretStr

from charter.api import review as review_api
from charter.app.local import local_services
from charter.client.trainer import TrainerClient
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.files import write_atomic
from charter.core.settings import CharterSettings, RoutingSettings
from charter.datasets.preference import preference_row
from charter.datasets.sources import RowError, read_rows
from charter.evaluation.policy_spec import EvalPolicySpec
from charter.pipelines.outputs import preference_rows
from charter.pipelines.rlaif_spec import RlaifSpec
from charter.pipelines.spec import PairSourceSpec, RlCaiSpec, ServicesSpec
from charter.review.routing import route as routing_of
from charter.review.store import Ledger
from charter.review.types import Choice, LabelQuery, LabelSource, Route, key

OVER_BUDGET = "over_budget"


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- 1. prompts -------------------------------------------------------------------------------------


def write_prompts(spec: RlaifSpec, iteration: int, path: Path) -> int:
    """The iteration's prompts (rows skip + (i-1)·n … skip + i·n - 1 of the file) as JSONL messages."""
    p = spec.prompts
    first = p.skip + (iteration - 1) * p.per_iteration
    rows = [
        {"messages": [m.model_dump() for m in r.messages], "source_index": r.index}
        for r in read_rows(p.path, p.format, first + p.per_iteration)
        if not isinstance(r, RowError) and r.index >= first
    ]
    if not rows:
        raise InvalidArgument(
            f"prompts: {p.path} has no usable rows from row {first} (iteration {iteration} of "
            f"{p.per_iteration} prompts each)", field="prompts.path",
        )  # fmt: skip
    write_jsonl(path, rows)
    return len(rows)


# -- 2. labels --------------------------------------------------------------------------------------


def labels_spec(
    spec: RlaifSpec, iteration: int, prompts: Path, output: Path, *, generator: str, judge: str
) -> RlCaiSpec:
    """RL-CAI over the iteration's prompts, on the policy's generator and the judge (local mode: both
    running in this process, addressed as remote services; remote mode: the deployed ones)."""
    return RlCaiSpec(
        kind="rl-cai", name=f"{spec.name}-i{iteration}",
        pairs=PairSourceSpec(kind="generator", path=prompts, format="jsonl"),
        constitution=spec.constitution, judge=spec.judge, seed=spec.seed + iteration,
        generation=spec.generation, batch_size=spec.batch_size, output=output,
        services=ServicesSpec(mode="remote", generator=generator, judge=judge, **spec.services.model_dump(
            include={"timeout_seconds", "retries", "backoff_seconds", "token_file"})),
        inference=spec.inference,
    )  # fmt: skip


# -- 3. routing and the ledger ----------------------------------------------------------------------


def label_of(record: Mapping[str, Any]) -> label_pb2.PreferenceLabel:
    return ParseDict(record["label"], label_pb2.PreferenceLabel(), ignore_unknown_fields=True)


def route(
    records: Sequence[Mapping[str, Any]], routing: RoutingSettings, budget: int, tags: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every label's route under the ledger's policy; of the labels it would queue for people, the
    `budget` most uncertain keep their route and the rest become `over_budget` (not submitted)."""
    routed = []
    for record in records:
        label = label_of(record)
        r = routing_of(review_api.submission(label), routing)
        routed.append({
            "label_id": label.id, "key": record["key"], "route": key(r.route), "reason": key(r.reason),
            "priority": r.priority, "p_a": label.p_a, "confidence": label.confidence,
            "swap_consistent": label.swap_consistent, "status": record["status"],
            "constitution_digest": label.constitution.digest, **tags,
        })  # fmt: skip
    queued = sorted(
        (x for x in routed if x["route"] != key(Route.AUTO_ACCEPTED)),
        key=lambda x: (-x["priority"], x["label_id"]),
    )
    for x in queued[budget:]:
        x["route"] = OVER_BUDGET
    return routed


def submit(database: str, routing: RoutingSettings, records: Sequence[Mapping[str, Any]],
           routed: Sequence[Mapping[str, Any]]) -> dict[str, int]:  # fmt: skip
    """Submit the labels that are not over the budget (idempotent: a resubmission is a no-op)."""
    keep = {x["label_id"] for x in routed if x["route"] != OVER_BUDGET}
    labels = [label for r in records if (label := label_of(r)).id in keep]
    ledger = Ledger(database, routing)
    try:
        results = ledger.submit(review_api.submissions(labels)) if labels else []
    finally:
        ledger.close()
    counts: dict[str, int] = {}
    for result in results:
        name = "duplicate" if result.duplicate else key(result.route)
        counts[name] = counts.get(name, 0) + 1
    return counts


def human_decided(database: str, label_ids: set[str]) -> dict[str, Any]:
    """The accepted-stream entries people decided, of the given labels."""
    ledger = Ledger(database)
    found: dict[str, Any] = {}
    try:
        cursor, query = 0, LabelQuery(sources=(LabelSource.HUMAN,))
        while True:
            page = ledger.accepted_after(cursor, query)
            found.update({a.label_id: a for a in page.labels if a.label_id in label_ids})
            if not page.more:
                break
            cursor = page.last
    finally:
        ledger.close()
    return found


# -- 4. training ------------------------------------------------------------------------------------


def training_rows(
    records: Sequence[Mapping[str, Any]], routed: Sequence[Mapping[str, Any]], database: str,
    over_budget: str, tags: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
    """The DPO rows and how many came from each route (the human decisions from the ledger)."""
    queued = queued_ids(routed)
    return rows_from(records, routed, human_decided(database, queued) if queued else {}, over_budget, tags)


def queued_ids(routed: Sequence[Mapping[str, Any]]) -> set[str]:
    """The labels an iteration sent to people."""
    return {x["label_id"] for x in routed if x["route"] in ("human_review", "rejected")}


def rows_from(
    records: Sequence[Mapping[str, Any]], routed: Sequence[Mapping[str, Any]], decided: Mapping[str, Any],
    over_budget: str, tags: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
    """The DPO rows given the accepted-stream entries people `decided` (by label id; `choice`, `p_a`,
    `human_decisions[].reviewer`, `sequence`), and how many came from each route."""
    by_id = {label_of(r).id: r for r in records}
    queued = queued_ids(routed)
    decided = {k: v for k, v in decided.items() if k in queued}
    rows: list[dict[str, Any]] = []
    used = {"auto_accepted": 0, "human": 0, OVER_BUDGET: 0, "awaiting_people": len(queued) - len(decided)}
    for x in routed:
        record = by_id[x["label_id"]]
        if x["route"] == "auto_accepted" or (x["route"] == OVER_BUDGET and over_budget == "train"):
            row = next(iter(preference_rows([record])), None)
            source = x["route"]
        elif x["label_id"] in decided:
            row, source = _human_row(record, decided[x["label_id"]]), "human"
        else:
            continue
        if row is not None:
            rows.append({**row, "label_route": source, **tags})
            used[source] += 1
    return rows, used


def _human_row(record: Mapping[str, Any], accepted: Any) -> dict[str, Any] | None:
    names: dict[int, str] = {Choice.A: "A", Choice.B: "B"}
    choice = names.get(int(accepted.choice))  # an unknown value: no preference
    if choice is None:
        return None
    label, constitution = record["label"], record["provenance"].get("constitution") or {}
    return preference_row(
        record["prompt"], record["response_a"], record["response_b"], float(accepted.p_a), choice,
        label_source="human", ai_p_a=float(label["p_a"]),
        human_reviewers=[d.reviewer for d in accepted.human_decisions], sequence=accepted.sequence,
        label_id=label["id"], principle_ids=label["principle_ids"],
        constitution_id=constitution.get("id", ""),
        constitution_digest=constitution.get("digest", ""), key=record["key"],
    )  # fmt: skip


def trainer_settings(settings: CharterSettings, output: Path) -> CharterSettings:
    """The loop's own run store and runs folder, inside its output folder."""
    trainer = settings.trainer.model_copy(update={
        "database_url": SecretStr(f"sqlite:///{(output / 'trainer.db').resolve()}"),
        "runs_dir": (output / "runs").resolve(),
    })  # fmt: skip
    return settings.model_copy(update={"trainer": trainer})


async def train(
    spec: RlaifSpec, iteration: int, base_model: str, data: Path, settings: CharterSettings
) -> dict[str, Any]:
    """Local mode: a DPO run from `base_model` on `data` through a trainer service in this process,
    with the loop's own run store (`trainer_settings`)."""
    local = trainer_settings(settings, spec.output)
    async with (
        local_services(local, ("trainer",), drain_seconds=0) as address,
        TrainerClient(address, timeout=spec.services.timeout_seconds) as trainer,
    ):
        logs = f"under {local.trainer.runs_dir}"
        return await run_dpo(trainer, spec, iteration, base_model, data, logs=logs)


async def run_dpo(
    trainer: TrainerClient, spec: RlaifSpec, iteration: int, base_model: str, data: Path, *, logs: str
) -> dict[str, Any]:
    """A DPO run from `base_model` on `data` (the same run again on a re-run: an idempotency key per
    iteration; a failed or cancelled one is resumed from its last checkpoint), followed to its end.
    The run's model folder must be readable here (the evaluation loads it)."""
    run_spec = tp.RunSpec(name=f"{spec.name}-i{iteration}", algorithm=tp.ALGORITHM_DPO, base_model=base_model,
                          seed=spec.seed + iteration)  # fmt: skip
    run_spec.data.files.paths.append(str(data.resolve()))
    hyperparameters = Struct()
    hyperparameters.update(spec.dpo.hyperparameters)
    run_spec.hyperparameters.CopyFrom(hyperparameters)
    idempotency = f"rlaif:{spec.name}:{spec.digest()[7:23]}:{iteration}"
    run = await trainer.start_run(run_spec, idempotency)
    if run.state in (tp.RUN_STATE_FAILED, tp.RUN_STATE_CANCELLED):
        run = await trainer.resume_run(run.id)
    async for _ in trainer.watch_run(run.id):
        pass
    run = await trainer.get_run(run.id)
    if run.state != tp.RUN_STATE_SUCCEEDED:
        raise FailedPrecondition(
            f"iteration {iteration}: the DPO run {run.id} did not succeed ({run.reason or run.state}); "
            f"its log is {logs} ({run.id}); run the spec again to resume it"
        )
    model = Path(run.output_dir)  # the run's model folder (older stores named the run folder)
    model = model if (model / "config.json").exists() else model / "model"
    if not (model / "config.json").exists():
        raise FailedPrecondition(
            f"iteration {iteration}: the DPO run {run.id} succeeded but its model folder {run.output_dir} "
            "is not readable here: the evaluation loads it, so mount the trainer's runs volume at the same "
            "path where the loop runs"
        )
    return {"run_id": run.id, "model": str(model), "steps": run.step, "rows": run.rows,
            "metrics": dict(run.last_metrics)}  # fmt: skip


# -- 5. evaluation ----------------------------------------------------------------------------------


def eval_spec(
    spec: RlaifSpec, policies: Sequence[Mapping[str, Any]], *, judge: str, exclude: Sequence[Path],
    judge_token_file: Path | None = None,
) -> EvalPolicySpec:  # fmt: skip
    """`charter eval policy` of `policies` (start first, named by version) with the loop's judge."""
    e = spec.evaluation
    return EvalPolicySpec.model_validate({
        "kind": "eval-policy", "name": f"{spec.name}-eval",
        "models": [{"name": p["version"], "model": p["model"]} for p in policies],
        "baseline": policies[0]["version"],
        "red_team": {**e.red_team.model_dump(), "constitution": spec.constitution},
        "benign": e.benign.model_dump(),
        "generation": e.generation.model_dump(),
        "judge": {"principles_per_label": e.principles_per_label, "address": judge,
                  **({"token_file": judge_token_file} if judge_token_file else {}),
                  **({"tie_margin": spec.judge.tie_margin} if spec.judge.tie_margin is not None else {})},
        "gold": {**e.gold.model_dump(), "exclude": [str(p) for p in exclude if p.exists()]},
        "seed": spec.seed, "batch_size": spec.batch_size, "bootstrap_resamples": e.bootstrap_resamples,
        "output": spec.output / "eval",
    })  # fmt: skip

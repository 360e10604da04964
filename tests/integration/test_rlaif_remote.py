"""Iterated RLAIF in remote mode against real services on 127.0.0.1 (started in this process): a
generator and a judge sharing the embedded model's engine (transformers), a review service on SQLite
with tokens, a trainer service with local workers. One iteration on 4 prompts: the generator is
swapped to p0, samples, the judge labels, the review service routes within the human budget, the
trainer runs one DPO step, the evaluation runs here, the gates promote and the generator ends up
serving the new run — and a re-run does nothing but check that. A second, model-free test keeps the
human budget against a review service whose routing differs from the pipeline's."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from charter.app.local import local_services
from charter.client.review import ReviewClient
from charter.core.errors import Unauthenticated
from charter.core.settings import RoutingSettings, load_settings
from charter.pipelines import rlaif
from charter.pipelines.rlaif_remote import RemoteServices
from charter.pipelines.rlaif_spec import RlaifSpec
from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2
from google.protobuf.json_format import MessageToDict

from tests.support import SHARED_DATA
from tests.support.hh import HH_DEV
from tests.support.trainer import roots_for

pytestmark = pytest.mark.integration

SERVICE, REVIEWER = "svc-token-for-tests", "reviewer-token-for-tests"
LOOSE = {"gold_tolerance": 1.0, "harmlessness_min_gain": -0.5, "evasiveness_max_rise": 1.0}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def review_settings(tmp_path: Path, **routing) -> dict:
    return {
        "database_url": f"sqlite:///{tmp_path / 'ledger.db'}", "web_port": None, "poll_seconds": 0.05,
        "tokens": [{"name": "pipeline", "role": "service", "token": SERVICE},
                   {"name": "ann", "role": "reviewer", "token": REVIEWER}],
        "routing": {"audit_rate": 0.0, **routing},
    }  # fmt: skip


def spec(tmp_path: Path, p0: Path, addresses: dict[str, str], token_file: Path) -> RlaifSpec:
    return RlaifSpec.model_validate({
        "kind": "rlaif", "name": "remote", "iterations": 1, "policy": str(p0), "constitution": "harmless",
        "prompts": {"path": str(HH_DEV), "format": "hh-rlhf", "per_iteration": 4},
        "judge": {"principles_per_label": 1, "method": "multiple_choice", "logit_scale": 5.739},
        "generation": {"temperature": 1.0, "max_tokens": 16},
        "review": {"human_budget": 1, "over_budget": "train"},
        "dpo": {"hyperparameters": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-4,
                                    "beta": 0.1, "max_length": 128}},
        "evaluation": {
            "red_team": {"path": str(HH_DEV), "format": "hh-rlhf", "skip": 600, "limit": 2},
            "benign": {"limit": 1},
            "gold": {"path": str(HH_DEV), "skip": 700, "limit": 2, "max_length": 160},
            "generation": {"temperature": 0.7, "max_tokens": 6},
            "principles_per_label": 1, "bootstrap_resamples": 50,
        },
        "gates": LOOSE, "batch_size": 8, "output": str(tmp_path / "out"),
        "services": {"mode": "remote", **addresses, "token_file": str(token_file), "timeout_seconds": 600},
    })  # fmt: skip


@pytest.mark.timeout(600)
async def test_one_remote_iteration_is_promoted_and_the_generator_serves_the_new_run(
    tmp_path, hf_engine, embedded_model
):
    inference = {"engine": "transformers", "model": str(embedded_model), "dtype": "float32", "threads": 1,
                 "max_model_len": 2048}  # fmt: skip
    backend = load_settings(
        review=review_settings(tmp_path),
        trainer={"database_url": f"sqlite:///{tmp_path / 'trainer.db'}", "runs_dir": str(tmp_path / "runs"),
                 "worker_threads": 1, "poll_seconds": 0.1, "allowed_roots": roots_for(tmp_path)},
    )  # fmt: skip
    token_file = tmp_path / "service.token"
    token_file.write_text(SERVICE)
    async with contextlib.AsyncExitStack() as stack:
        review = await stack.enter_async_context(local_services(backend, ("review",), drain_seconds=0))
        trainer = await stack.enter_async_context(local_services(backend, ("trainer",), drain_seconds=0))
        engines = load_settings(
            inference=inference, judge={"method": "multiple_choice", "logit_scale": 5.739},
            generator={"trainer_address": trainer},
        )  # fmt: skip
        generator = await stack.enter_async_context(
            local_services(engines, ("generator", "judge"), engine=hf_engine, drain_seconds=0)
        )
        addresses = {"generator": generator, "judge": generator, "review": review, "trainer": trainer}
        s = spec(tmp_path, embedded_model, addresses, token_file)
        lines: list[str] = []
        # this process's settings: the evaluation's engine (the policies' folders), the same routing
        config = load_settings(inference=inference, review={"routing": {"audit_rate": 0.0}})
        summary = await rlaif.run(s, config, on_step=lines.append)

        assert summary.steps_run == 4 and not summary.stopped
        assert summary.policy["version"] == "p1" and summary.iterations[0]["decision"]["promoted"]
        out = s.output
        state = json.loads((out / "iterations/1/iteration.json").read_text())
        run_id = state["steps"]["train"]["run_id"]
        assert summary.policy["run_id"] == run_id and (Path(summary.policy["model"]) / "config.json").exists()

        # the generator was swapped to p0 (it started on the shared engine under another name), sampled
        # with it, and ends serving the promoted run
        p0_version = state["policy_in"]["policy_version"]
        assert p0_version.startswith(f"{embedded_model}@sha256:")
        records = jsonl(out / "iterations/1/labels/records.jsonl")
        assert records and {r["origin"]["generator_model"]["policy_version"] for r in records} == {p0_version}
        assert state["served"]["swapped"] and state["served"]["previous"] == p0_version
        served = (await RemoteServices(s, config).served()).model  # a Generate call's ModelRef
        assert served.policy_version.startswith(f"run:{run_id}@sha256:")
        assert served.policy_version == state["served"]["policy_version"]
        assert any(line == f"iteration 1: the generator serves {served.policy_version}" for line in lines)

        # the artefacts are tagged as in local mode
        digest = state["steps"]["labels"]["constitution_digest"]
        assert digest.startswith("sha256:")
        assert {r["label"]["constitution"]["digest"] for r in records} == {digest}
        routed = jsonl(out / "iterations/1/routing.jsonl")
        train = jsonl(out / "iterations/1/train.jsonl")
        for rows in (routed, train):
            assert {(x["iteration"], x["policy_version"], x["constitution_digest"]) for x in rows} == {
                (1, "p0", digest)
            }
        routes = state["steps"]["route"]["routes"]
        assert routes["human_review"] + routes["rejected"] <= 1  # the human budget, on the service's routes
        assert sum(routes.values()) == len(records)
        # the review service holds what was submitted (not the over-budget labels), routed by it
        async with ReviewClient(review, token=SERVICE, timeout=60) as client:
            stats = await client.stats()
        assert stats.labels_total == len(records) - routes["over_budget"]
        assert stats.queue_depth == routes["human_review"] + routes["rejected"]
        assert state["steps"]["route"]["stream"] == {"before": 0, "after": routes["auto_accepted"]}
        used = state["steps"]["train"]["used"]
        assert used["auto_accepted"] + used["over_budget"] == len(train) and used["human"] == 0
        run_spec = json.loads((tmp_path / "runs" / run_id / "spec.json").read_text())
        assert run_spec["baseModel"] == str(embedded_model)
        assert run_spec["data"]["files"]["paths"] == [str((out / "iterations/1/train.jsonl").resolve())]
        report = json.loads((out / "report.json").read_text())["iterations"]
        assert [(r["policy_in"], r["policy"], r["promoted"]) for r in report] == [("p0", "p1", True)]
        assert (out / "iterations/1/eval/report.md").exists()

        # all done: a re-run runs nothing, and finds the generator already serving p1 (no swap)
        again = await rlaif.run(s, config)
        assert again.steps_run == 0 and again.steps_done_before == 4 and again.policy["version"] == "p1"
        state = json.loads((out / "iterations/1/iteration.json").read_text())
        assert state["served"] == {"model": f"run:{run_id}", "policy_version": served.policy_version,
                                   "swapped": False}  # fmt: skip


# -- the human budget against the service's own routing (no model) ------------------------------------


def _record(i: int, p_a: float) -> dict:
    label = label_pb2.PreferenceLabel(
        id=f"lbl-{i}", p_a=p_a, confidence=abs(p_a - 0.5) * 2, swap_consistent=True,
        choice=label_pb2.CHOICE_A if p_a > 0.5 else label_pb2.CHOICE_B, status=label_pb2.LABEL_STATUS_OK,
        principle_ids=["harm-1"],
    )  # fmt: skip
    label.constitution.id, label.constitution.digest = "harmless", "sha256:c0ffee"
    return {
        "key": f"k{i}", "prompt": [{"role": "user", "content": f"prompt {i}"}],
        "response_a": f"a{i}", "response_b": f"b{i}", "status": "ok", "source_preference": None,
        "label": MessageToDict(label, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        "provenance": {"constitution": {"id": "harmless", "digest": "sha256:c0ffee"}, "judge": {}},
    }  # fmt: skip


async def test_the_budget_holds_on_the_services_routes_and_peoples_decisions_train(tmp_path):
    """The service queues a label this process expected it to accept (its accept_confidence is 0.9, the
    pipeline's 0.5): that label uses the budget, so only one more goes to people; a decision made in the
    review service reaches the training rows through its accepted stream."""
    backend = load_settings(review=review_settings(tmp_path, accept_confidence=0.9))
    async with local_services(backend, ("review",), drain_seconds=0) as review:
        token_file = tmp_path / "service.token"
        token_file.write_text(SERVICE)
        unused = "127.0.0.1:1"
        addresses = {"generator": unused, "judge": unused, "review": review, "trainer": unused}
        s = spec(tmp_path, SHARED_DATA, addresses, token_file)
        s = s.model_copy(update={"review": s.review.model_copy(update={"human_budget": 2})})
        routing = RoutingSettings(accept_confidence=0.5, audit_rate=0.0)
        config = load_settings(review={"routing": routing.model_dump()})
        remote = RemoteServices(s, config)
        records = [_record(0, 0.99), _record(1, 0.8), _record(2, 0.6), _record(3, 0.52), _record(4, 0.45)]
        tags = {"iteration": 1, "policy_version": "p0"}
        routed, result = await remote.route(1, records, tags)
        by_id = {x["label_id"]: x for x in routed}
        # expected auto: 0.99 (accepted) and 0.8 (queued by the service: confidence 0.6 < 0.9); then room
        # for one more: the most uncertain (0.52); 0.6 and 0.45 are over the budget
        assert {k: by_id[f"lbl-{k}"]["route"] for k in range(5)} == {
            0: "auto_accepted", 1: "human_review", 3: "human_review", 2: "over_budget", 4: "over_budget",
        }  # fmt: skip
        assert result["submitted"] == {"auto_accepted": 1, "human_review": 2}
        assert result["people_over_budget"] == 0
        assert result["stream"] == {"before": 0, "after": 1}
        again, _ = await remote.route(1, records, tags)  # a resumed step: duplicates, the same routes
        assert [x["route"] for x in again] == [x["route"] for x in routed]

        async with ReviewClient(review, token=REVIEWER, timeout=30) as reviewer:
            claimed = (await reviewer.claim()).item
            assert claimed.item_id == "lbl-3"  # the most uncertain first
            await reviewer.decide(claimed.item_id, claimed.lease_id, review_pb2.HUMAN_CHOICE_B)
        rows, used = await remote.training_rows(records, routed, result, tags)
        assert used == {"auto_accepted": 1, "human": 1, "over_budget": 2, "awaiting_people": 1}
        human = next(r for r in rows if r["label_route"] == "human")
        assert human["label_id"] == "lbl-3" and human["human_reviewers"] == ["ann"]
        assert human["chosen"][0]["content"] == "b3" and human["ai_p_chosen"] == pytest.approx(0.48)
        assert {r["iteration"] for r in rows} == {1} and len(rows) == 4

        # a refusal is one line naming the service, its address and the call
        token_file.write_text("not-a-token")
        with pytest.raises(Unauthenticated) as err:
            await RemoteServices(s, config).route(2, records, tags)
        assert str(err.value).startswith(f"services.review: Submit at {review}: UNAUTHENTICATED: ")

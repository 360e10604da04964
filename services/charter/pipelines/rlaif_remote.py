"""The steps of `kind: rlaif` in remote mode (`services.mode: remote`): the same loop
(`pipelines.rlaif`) driving deployed services through `charter.client`, as any caller would.

- **sample**: the generator at `services.generator` is made to serve the iteration's policy —
  `SwapModel` to `run:<id>` of the last promoted iteration's DPO run, or to p0's model folder — unless
  it already does (a one-token `Generate` reads the served `ModelRef`); the labelling is RL-CAI in
  remote mode against it and the judge at `services.judge`;
- **route**: labels go to the review service at `services.review`, whose routing decides; the human
  budget is kept by submitting in order — first the labels this process's `review.routing` expects
  to be auto-accepted, then the most uncertain others, as many at a time as the budget has room left
  after what the service actually queued — and the rest are `over_budget` (never submitted);
- **train**: a DPO run on the trainer service at `services.trainer` over the iteration's `train.jsonl`
  (the exact rows of local mode: auto-accepted labels, labels people decided — read from the service's
  accepted stream — and over-budget ones with `review.over_budget: train`). The trainer reads that
  file and the evaluation reads the run's model folder, so the loop's output folder and the trainer's
  runs folder must be one filesystem at the same paths (in Kubernetes: the runs volume);
- **eval**: `charter eval policy` in this process: each policy's replies from an engine here on its
  model folder (`inference`), judged by the judge service, gold from the weights;
- **promote**: the generator serves `run:<id>` of the promoted policy (the same check-then-swap).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from charter_proto.generator.v1 import generator_pb2
from charter_proto.review.v1 import review_pb2
from grpc import aio

from charter.api import common as convert
from charter.client.generator import GeneratorClient
from charter.client.review import ReviewClient
from charter.client.trainer import TrainerClient
from charter.core import errors
from charter.core.auth import read_token
from charter.core.settings import CharterSettings
from charter.inference.types import Message, Sampling
from charter.pipelines import rlaif_steps as steps
from charter.pipelines.rlaif_spec import RlaifSpec
from charter.review.types import Route, RouteReason, key

SUBMIT_BATCH = 256
"""Labels per Submit call."""


_ERRORS: dict[str, type[errors.CharterError]] = {
    e.code: e
    for e in (errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
              errors.OutOfRange, errors.Unauthenticated, errors.PermissionDenied, errors.ResourceExhausted,
              errors.Unavailable, errors.DeadlineExceeded)
}  # fmt: skip


@contextlib.contextmanager
def service_errors(service: str, address: str, what: str) -> Iterator[None]:
    """A service's refusal as one line naming the service, its address and the call (the same code)."""
    try:
        yield
    except aio.AioRpcError as err:
        error = _ERRORS.get(err.code().name, errors.Internal)
        raise error(
            f"services.{service}: {what} at {address}: {err.code().name}: {err.details()}",
            field=f"services.{service}",
        ) from None


def policy_ref(policy: Mapping[str, Any]) -> str:
    """What the generator is asked to serve for `policy`: its DPO run, or p0's model folder."""
    return f"run:{policy['run_id']}" if policy.get("run_id") else str(policy["model"])


def served_name(policy_version: str) -> str:
    """`run:r-1@sha256:0a…` -> `run:r-1` (the name the model was asked for)."""
    return policy_version.split("@sha256:", 1)[0]


class RemoteServices:
    """The deployed generator, judge, review and trainer services (`services.*`)."""

    mode = "remote"

    def __init__(self, spec: RlaifSpec, settings: CharterSettings) -> None:
        self.spec, self.settings = spec, settings
        s = spec.services
        assert s.generator and s.judge and s.review and s.trainer
        self.options = s.client_options()
        admin = read_token(s.admin_token_file, "services.admin_token_file") if s.admin_token_file else None
        self.admin_options = {**self.options, "token": admin or self.options["token"]}

    async def judge(self) -> str:
        assert self.spec.services.judge
        return self.spec.services.judge

    def judge_token_file(self) -> Path | None:
        return self.spec.services.token_file

    async def served(self) -> generator_pb2.GenerateResponse:
        """One token from the generator: its reply's `model` says what it serves."""
        assert self.spec.services.generator
        request = generator_pb2.GenerateRequest(
            prompts=[convert.conversation_proto([Message(role="user", content="Hello")], "probe")],
            sampling=convert.sampling_proto(Sampling(n=1, max_tokens=1)),
            request_id=f"rlaif:{self.spec.name}:probe",
        )
        address = self.spec.services.generator
        with service_errors("generator", address, "Generate"):
            async with GeneratorClient(address, **self.options) as generator:
                responses: list[generator_pb2.GenerateResponse] = await generator.generate(request)
                return responses[0]

    async def serve(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """Make the generator serve `policy` (a swap only when it serves something else)."""
        assert self.spec.services.generator
        ref = policy_ref(policy)
        now = (await self.served()).model
        if served_name(now.policy_version) == ref:
            return {"model": ref, "policy_version": now.policy_version, "swapped": False}
        address = self.spec.services.generator
        with service_errors("generator", address, f"SwapModel to {ref}"):
            async with GeneratorClient(address, **self.admin_options) as generator:
                request_id = f"rlaif:{self.spec.name}:{policy['version']}"
                swapped = await generator.swap_model(ref, request_id=request_id)
        return {"model": ref, "policy_version": swapped.model.policy_version, "swapped": True,
                "previous": swapped.previous.policy_version,
                "paused_seconds": round(swapped.paused_seconds, 3)}  # fmt: skip

    async def generator(self, policy: dict[str, Any]) -> str:
        served = await self.serve(policy)
        policy["policy_version"] = served["policy_version"]
        assert self.spec.services.generator
        return self.spec.services.generator

    async def close_generator(self) -> None:
        """The deployed generator keeps serving (the policy stays until a promotion swaps it)."""

    def _review(self) -> ReviewClient:
        assert self.spec.services.review
        return ReviewClient(self.spec.services.review, **self.options)

    async def route(
        self, iteration: int, records: Sequence[Mapping[str, Any]], tags: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Submit within the human budget; each label's route is the service's (`over_budget`: not
        submitted). Records the accepted stream's cursor before and after."""
        with service_errors("review", str(self.spec.services.review), "Submit"):
            return await self._route(iteration, records, tags)

    async def _route(
        self, iteration: int, records: Sequence[Mapping[str, Any]], tags: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        budget = self.spec.review.human_budget
        predicted = steps.route(records, self.settings.review.routing, len(records), tags)
        labels = {(label := steps.label_of(r)).id: label for r in records}
        expected_auto = [x for x in predicted if x["route"] == key(Route.AUTO_ACCEPTED)]
        rest = sorted((x for x in predicted if x["route"] != key(Route.AUTO_ACCEPTED)),
                      key=lambda x: (-x["priority"], x["label_id"]))  # fmt: skip
        results: dict[str, review_pb2.SubmitResult] = {}
        calls = 0
        async with self._review() as review:
            before = (await review.stats()).last_cursor.sequence

            async def send(batch: Sequence[Mapping[str, Any]]) -> None:
                nonlocal calls
                for start in range(0, len(batch), SUBMIT_BATCH):
                    chunk = batch[start : start + SUBMIT_BATCH]
                    calls += 1
                    request_id = f"rlaif:{self.spec.name}:{iteration}:{calls}"
                    replies = await review.submit([labels[x["label_id"]] for x in chunk], request_id)
                    results.update({r.label_id: r for r in replies})

            def people() -> int:
                return sum(1 for r in results.values() if r.route != review_pb2.ROUTE_AUTO_ACCEPTED)

            await send(expected_auto)
            while rest and people() < budget:
                room = budget - people()
                await send(rest[:room])
                rest = rest[room:]
            after = (await review.stats()).last_cursor.sequence
        submitted: dict[str, int] = {}
        for x in predicted:
            r = results.get(x["label_id"])
            if r is None:
                x["route"] = steps.OVER_BUDGET
                continue
            x["route"], x["reason"] = key(Route(r.route)), key(RouteReason(r.reason))
            x["ledger_sequence"] = r.sequence
            name = "duplicate" if r.duplicate else x["route"]
            submitted[name] = submitted.get(name, 0) + 1
        return predicted, {
            "submitted": submitted, "ledger": f"review service {self.spec.services.review}",
            "stream": {"before": before, "after": after}, "people_over_budget": max(0, people() - budget),
        }  # fmt: skip

    async def training_rows(
        self, records: Sequence[Mapping[str, Any]], routed: Sequence[Mapping[str, Any]],
        route: Mapping[str, Any], tags: Mapping[str, Any],
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
        """The rows of local mode; people's decisions from the service's accepted stream (human
        entries after the cursor recorded before this iteration submitted)."""
        queued = steps.queued_ids(routed)
        decided = await self._decided(queued, int(route.get("stream", {}).get("before", 0))) if queued else {}
        return steps.rows_from(records, routed, decided, self.spec.review.over_budget, tags)

    async def _decided(self, queued: set[str], cursor: int) -> dict[str, Any]:
        decided: dict[str, Any] = {}
        flt = review_pb2.LabelFilter(sources=[review_pb2.LABEL_SOURCE_HUMAN])
        with service_errors("review", str(self.spec.services.review), "StreamLabels"):
            async with self._review() as review:
                async for a in review.stream_labels(cursor, flt):
                    if a.label.id in queued:
                        decided[a.label.id] = SimpleNamespace(
                            choice=a.choice, p_a=a.p_a, sequence=a.sequence,
                            human_decisions=[SimpleNamespace(reviewer=d.reviewer) for d in a.human_decisions],
                        )  # fmt: skip
        return decided

    async def train(self, iteration: int, base_model: str, data: Path) -> dict[str, Any]:
        address = self.spec.services.trainer
        assert address
        with service_errors("trainer", address, "the DPO run"):
            async with TrainerClient(address, **self.options) as trainer:
                logs = f"on the trainer service at {address}"
                return await steps.run_dpo(trainer, self.spec, iteration, base_model, data, logs=logs)

    async def promote(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """The generator serves the promoted policy's run from now on."""
        return await self.serve(policy)

    async def close(self) -> None:
        """Nothing to stop: the services are deployed."""

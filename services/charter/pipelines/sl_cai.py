"""The SL-CAI pipeline: prompts -> initial responses (generator) -> critique/revision rounds
(critic-reviser) -> a TRL-ready SFT dataset plus a full record per prompt.

It drives the services over gRPC like any external client: in local mode it first starts them
in this process on a free localhost port (one engine shared by both); in remote mode it uses the
addresses it is given. Resumable: finished prompts are skipped on the next run (see `store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter_proto.common.v1 import critique_pb2, sampling_pb2
from charter_proto.critic.v1 import critic_pb2
from charter_proto.generator.v1 import generator_pb2
from google.protobuf.json_format import MessageToDict

from charter import __version__
from charter.api import common as convert
from charter.client.critic import CriticClient
from charter.client.generator import GeneratorClient
from charter.core import tracing
from charter.core.errors import InvalidArgument
from charter.core.settings import CharterSettings
from charter.datasets.records import OutputStore
from charter.datasets.sources import PromptRow, read_rows
from charter.pipelines import outputs, runner
from charter.pipelines.runner import Batches
from charter.pipelines.spec import SlCaiSpec

_FINISH = {sampling_pb2.FINISH_REASON_STOP: "stop", sampling_pb2.FINISH_REASON_LENGTH: "length"}


@dataclass
class Summary(runner.Summary):
    item_noun = "prompts"
    status_noun = "sample"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompts_per_second": round(self.written / self.seconds, 3) if self.seconds else 0.0,
        }


class SlCai:
    """SL-CAI's steps for `pipelines.runner`: generate, critique and revise, write a record a prompt."""

    def __init__(self, spec: SlCaiSpec, constitutions: Path | None = None) -> None:
        self.spec = spec
        self.constitutions = constitutions
        """The constitutions folder: the dataset card's principle texts (`outputs`)."""
        self.spec_digest = spec.digest()
        self.summary = Summary()
        self.generator: GeneratorClient | None = None
        self.critic: CriticClient | None = None
        self.gen_sampling = convert.sampling_proto(spec.generation.sampling(n=spec.samples, seed=spec.seed))
        self.crit_options = critic_pb2.CritiqueOptions(
            constitution_id=spec.constitution,
            rounds=spec.rounds or 0,
            sampling=convert.sampling_proto(spec.critique.sampling(seed=spec.seed)),
            seed=spec.seed,
        )

    # ---- the runner's hooks ----------------------------------------------------------------------
    def collect(self) -> Any:
        return read_rows(self.spec.source.path, self.spec.source.format, self.spec.source.limit)

    def local_services(self) -> tuple[str, ...]:
        return ("generator", "critic-reviser")

    def connect(self, address: str | None) -> None:
        s = self.spec.services
        generator, critic = (address, address) if address else (s.generator, s.critic_reviser)
        if not (generator and critic):
            raise InvalidArgument("services: remote mode needs generator and critic_reviser addresses")
        self.generator = GeneratorClient(generator, **s.client_options())
        self.critic = CriticClient(critic, **s.client_options())

    async def close(self) -> None:
        for client in (self.generator, self.critic):
            if client is not None:
                await client.close()

    def finalise(self, store: OutputStore) -> None:
        outputs.write_datasets(store, source=self.spec.source.path, constitutions=self.constitutions)

    async def run_batch(self, rows: list[PromptRow], batches: Batches) -> None:
        await batches.split_on_item_errors(rows, lambda part: self._batch(part, batches))

    # ---- one batch -------------------------------------------------------------------------------
    async def _batch(self, rows: list[PromptRow], batches: Batches) -> None:
        """Generate, critique and write a batch."""
        assert self.generator is not None and self.critic is not None
        started = convert.now().ToJsonString()
        request = generator_pb2.GenerateRequest(
            prompts=[convert.conversation_proto(r.messages, r.key) for r in rows],
            sampling=self.gen_sampling,
            item_traceparents=tracing.item_traceparents(r.key for r in rows),
        )
        replies = await self.generator.generate(request)
        by_prompt: dict[int, dict[int, generator_pb2.GenerateResponse]] = {}
        for reply in replies:
            by_prompt.setdefault(reply.prompt_index, {})[reply.sample_index] = reply
        pairs = [(p, s) for p in range(len(rows)) for s in range(self.spec.samples)]
        todo = [i for i, (p, s) in enumerate(pairs) if by_prompt[p][s].completion.text.strip()]
        items = [
            critic_pb2.CritiqueItem(
                conversation=convert.conversation_proto(
                    rows[pairs[i][0]].messages, f"{rows[pairs[i][0]].key}:{pairs[i][1]}"
                ),
                response=by_prompt[pairs[i][0]][pairs[i][1]].completion.text,
            )
            for i in todo
        ]
        critique = critic_pb2.CritiqueReviseStreamRequest(
            items=items,
            options=self.crit_options,
            item_traceparents=tracing.item_traceparents(rows[pairs[i][0]].key for i in todo),
        )
        got = await self.critic.critique_revise(critique) if items else {}
        results = {todo[k]: v for k, v in got.items()}
        for p, row in enumerate(rows):
            samples = [
                self._sample_record(s, by_prompt[p][s], results.get(p * self.spec.samples + s))
                for s in range(self.spec.samples)
            ]
            self._write(row, samples, started, batches)

    def _sample_record(
        self, s: int, reply: generator_pb2.GenerateResponse, result: critic_pb2.CritiqueResult | None
    ) -> dict[str, Any]:
        completion = reply.completion
        record: dict[str, Any] = {
            "sample_index": s,
            "initial_response": completion.text,
            "initial_finish_reason": _FINISH.get(completion.finish_reason, "unknown"),
            "initial_prompt_tokens": completion.prompt_tokens,
            "initial_completion_tokens": completion.completion_tokens,
            "model": MessageToDict(reply.model, preserving_proto_field_name=True),
        }
        if result is None:  # nothing to revise: the initial response came back empty
            record.update(rounds=[], final_revision="", status="empty_response", critique_provenance=None)
            return record
        record.update(
            rounds=[
                MessageToDict(r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                for r in result.rounds
            ],
            final_revision=result.final_revision,
            status=critique_status(result.status),
            critique_provenance=MessageToDict(result.provenance, preserving_proto_field_name=True),
        )
        return record

    def _write(
        self,
        row: PromptRow,
        samples: list[dict[str, Any]],
        started: str,
        batches: Batches,
    ) -> None:
        provenance: dict[str, Any] = (
            next((s["critique_provenance"] for s in samples if s["critique_provenance"]), {}) or {}
        )
        record = {
            "key": row.key,
            "source_index": row.index,
            "prompt": [m.model_dump() for m in row.messages],
            "samples": samples,
            "provenance": {
                "pipeline": "sl-cai",
                "spec_name": self.spec.name,
                "spec_digest": self.spec_digest,
                "constitution": provenance.get("constitution"),
                "principle_ids": sorted(
                    {pid for s in samples for r in s["rounds"] for pid in [r["principle_id"]]}
                ),
                "model": samples[0]["model"],
                "generation_sampling": self.spec.generation.model_dump(),
                "critique_sampling": self.spec.critique.model_dump(),
                "samples": self.spec.samples,
                "seed": self.spec.seed,
                "started_at": started,
                "completed_at": convert.now().ToJsonString(),
                "charter_version": __version__,
                **runner.provenance_trace(row.key),  # the item's trace id, while tracing is on
            },
        }
        batches.store.add_record(record)
        summary = self.summary
        for s in samples:
            summary.statuses[s["status"]] += 1
            summary.prompt_tokens += s["initial_prompt_tokens"] + sum(
                r.get("prompt_tokens", 0) for r in s["rounds"]
            )
            summary.completion_tokens += s["initial_completion_tokens"] + sum(
                r.get("critique_tokens", 0) + r.get("revision_tokens", 0) for r in s["rounds"]
            )
        batches.written(1)


def critique_status(status: critique_pb2.StepStatus.ValueType) -> str:
    return convert.STEP_STATUS_NAMES[status]


async def run(spec: SlCaiSpec, settings: CharterSettings, **hooks: Any) -> Summary:
    """Run (or resume) the pipeline; returns what this run did. `hooks`: `runner.run`'s keywords
    (on_start, on_progress, engine)."""
    pipeline = SlCai(spec, settings.constitutions.directory)
    await runner.run(pipeline, settings, **hooks)
    return pipeline.summary

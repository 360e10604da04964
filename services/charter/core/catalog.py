"""The five services Charter runs, by the name `charter serve <name>` takes.

Each entry knows the service's full gRPC name and how to add a servicer to a server. Until a
service's own issue lands, it is served by the generated base servicer, whose RPCs answer
UNIMPLEMENTED — the process still runs the full bootstrap (health, reflection, metrics, drain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from charter_proto.review.v1 import review_pb2, review_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from grpc import aio

from charter.core.errors import InvalidArgument
from charter.core.server import Registration


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    full_name: str
    add: Callable[[Any, aio.Server], None]
    base_servicer: type
    uses_constitutions: bool

    def registration(self, servicer: Any | None = None) -> Registration:
        servicer = servicer if servicer is not None else self.base_servicer()
        return Registration(self.full_name, lambda server: self.add(servicer, server))


def _full_name(module: Any, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "generator",
            _full_name(generator_pb2, "GeneratorService"),
            generator_pb2_grpc.add_GeneratorServiceServicer_to_server,
            generator_pb2_grpc.GeneratorServiceServicer,
            uses_constitutions=False,
        ),
        ServiceSpec(
            "critic-reviser",
            _full_name(critic_pb2, "CriticReviserService"),
            critic_pb2_grpc.add_CriticReviserServiceServicer_to_server,
            critic_pb2_grpc.CriticReviserServiceServicer,
            uses_constitutions=True,
        ),
        ServiceSpec(
            "judge",
            _full_name(judge_pb2, "JudgeService"),
            judge_pb2_grpc.add_JudgeServiceServicer_to_server,
            judge_pb2_grpc.JudgeServiceServicer,
            uses_constitutions=True,
        ),
        ServiceSpec(
            "review",
            _full_name(review_pb2, "ReviewService"),
            review_pb2_grpc.add_ReviewServiceServicer_to_server,
            review_pb2_grpc.ReviewServiceServicer,
            uses_constitutions=True,
        ),
        ServiceSpec(
            "trainer",
            _full_name(trainer_pb2, "TrainerService"),
            trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            trainer_pb2_grpc.TrainerServiceServicer,
            uses_constitutions=False,
        ),
    )
}


def service_spec(name: str) -> ServiceSpec:
    try:
        return SERVICES[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown service {name!r}; choose one of: {', '.join(SERVICES)}", field="service", value=name
        ) from None

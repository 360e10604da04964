"""The five services Charter runs, by the name `charter serve <name>` takes, and how each is built.

Services in one process share `Resources`: one engine (one model load) and one constitution
registry. A service whose issue has not landed yet is served by the generated base servicer, whose
RPCs answer UNIMPLEMENTED — the process still runs the full bootstrap (health, reflection, metrics).
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

from charter.constitution.registry import ConstitutionRegistry
from charter.core.errors import InvalidArgument
from charter.core.server import Registration
from charter.core.settings import CharterSettings
from charter.inference.types import InferenceClient


class Resources:
    """What the services of one process share, built on first use."""

    def __init__(self, settings: CharterSettings, *, engine: InferenceClient | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._owns_engine = engine is None
        self._registry: ConstitutionRegistry | None = None

    def engine(self) -> InferenceClient:
        if self._engine is None:
            from charter.inference.factory import build_engine

            self._engine = build_engine(self.settings.inference)
        return self._engine

    def registry(self) -> ConstitutionRegistry:
        if self._registry is None:
            c = self.settings.constitutions
            self._registry = ConstitutionRegistry(c.directory, poll_seconds=c.poll_seconds).start()
        return self._registry

    async def close(self) -> None:
        if self._registry is not None:
            self._registry.stop()
        if self._engine is not None and self._owns_engine:
            await self._engine.close()


def _generator(resources: Resources) -> Any:
    from charter.generator.servicer import GeneratorServicer

    return GeneratorServicer(
        resources.engine(), default_max_tokens=resources.settings.generator.default_max_tokens
    )


def _critic(resources: Resources) -> Any:
    from charter.critic.servicer import CriticReviserServicer

    s = resources.settings.critic
    return CriticReviserServicer(
        resources.engine(),
        resources.registry(),
        default_max_tokens=s.default_max_tokens,
        few_shot_limit=s.few_shot_limit,
    )


def _review(resources: Resources) -> Any:
    from charter.review.servicer import ReviewServicer

    return ReviewServicer.from_settings(resources.settings)


def _trainer(resources: Resources) -> Any:
    from charter.trainer.servicer import TrainerServicer

    return TrainerServicer.from_settings(resources.settings)


def _judge(resources: Resources) -> Any:
    from charter.judge.servicer import JudgeServicer

    s = resources.settings.judge
    return JudgeServicer(
        resources.engine(),
        resources.registry(),
        tie_margin=s.tie_margin,
        few_shot_limit=s.few_shot_limit,
        cot_max_tokens=s.cot_max_tokens,
        max_requests_in_flight=s.max_requests_in_flight,
    )


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    full_name: str
    add: Callable[[Any, aio.Server], None]
    base_servicer: type
    build: Callable[[Resources], Any] | None = None
    """None until the service is implemented: the base servicer answers UNIMPLEMENTED."""
    uses_constitutions: bool = False

    def registration(self, servicer: Any | None = None) -> Registration:
        servicer = servicer if servicer is not None else self.base_servicer()
        lifecycle = servicer if hasattr(servicer, "drain") else None
        return Registration(self.full_name, lambda server: self.add(servicer, server), lifecycle)

    def registration_for_settings(self, settings: CharterSettings) -> Registration:
        """The service built from `settings` alone (services that need no engine, e.g. review)."""
        return self.registration_for(Resources(settings))

    def registration_for(self, resources: Resources) -> Registration:
        if self.uses_constitutions:
            resources.registry()
        return self.registration(self.build(resources) if self.build else None)


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
            build=_generator,
        ),
        ServiceSpec(
            "critic-reviser",
            _full_name(critic_pb2, "CriticReviserService"),
            critic_pb2_grpc.add_CriticReviserServiceServicer_to_server,
            critic_pb2_grpc.CriticReviserServiceServicer,
            build=_critic,
            uses_constitutions=True,
        ),
        ServiceSpec(
            "judge",
            _full_name(judge_pb2, "JudgeService"),
            judge_pb2_grpc.add_JudgeServiceServicer_to_server,
            judge_pb2_grpc.JudgeServiceServicer,
            build=_judge,
            uses_constitutions=True,
        ),
        ServiceSpec(
            "review",
            _full_name(review_pb2, "ReviewService"),
            review_pb2_grpc.add_ReviewServiceServicer_to_server,
            review_pb2_grpc.ReviewServiceServicer,
            build=_review,
        ),
        ServiceSpec(
            "trainer",
            _full_name(trainer_pb2, "TrainerService"),
            trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            trainer_pb2_grpc.TrainerServiceServicer,
            build=_trainer,
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

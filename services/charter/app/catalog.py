"""The five services Charter runs, by the name `charter serve <name>` takes: how each is built and
who may call each RPC.

Services in one process share `Resources`: one engine (one model load) and one constitution
registry. `ROLES` is the one method→role table the server interceptor enforces (`core.auth`): the
review service always checks tokens (with none configured it refuses every call); the others check
them once any are configured, and the trainer refuses to serve a non-loopback address without them
unless `trainer.allow_unauthenticated` is set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from charter_proto.review.v1 import review_pb2, review_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from grpc import aio

from charter.constitution.registry import ConstitutionRegistry, RegistryChange
from charter.core import metrics
from charter.core.auth import AccessPolicy, access_policy, read_token
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
        self._users = 0
        self._registry: ConstitutionRegistry | None = None

    def engine(self) -> InferenceClient:
        """The shared engine, built on first use; each service that takes it counts as a user."""
        if self._engine is None:
            from charter.inference.factory import build_engine

            self._engine = build_engine(self.settings.inference)
        self._users += 1
        return self._engine

    def engine_on(self, folder: str, name: str) -> InferenceClient:
        """A new engine of the configured kind and settings on another model folder (the generator's
        swap); the caller owns it."""
        from charter.inference.factory import build_engine

        return build_engine(self.settings.inference.model_copy(update={"model": folder}), name=name)

    async def release_engine(self, engine: InferenceClient) -> bool:
        """A service is done with the shared engine: it is closed (True) when these resources built it
        and no other service took it; otherwise it stays loaded (False)."""
        if engine is not self._engine or not self._owns_engine or self._users > 1:
            return False
        self._engine, self._users = None, 0
        await engine.close()
        return True

    def shares(self, engine: InferenceClient) -> bool:
        """Whether `engine` serves more than one service: several here, or it was handed in (its
        owner may use it elsewhere). Pushed weights would change it for all of them."""
        return engine is self._engine and (self._users > 1 or not self._owns_engine)

    def registry(self) -> ConstitutionRegistry:
        if self._registry is None:
            c = self.settings.constitutions
            self._registry = ConstitutionRegistry(
                c.directory, poll_seconds=c.poll_seconds, on_change=_constitution_metrics
            ).start()
        return self._registry

    async def close(self) -> None:
        if self._registry is not None:
            self._registry.stop()
        if self._engine is not None and self._owns_engine:
            await self._engine.close()


def _constitution_metrics(change: RegistryChange) -> None:
    """The registry's changes on /metrics: which version serves, which files are rejected."""
    metrics.CONSTITUTION_RELOADS.labels(change.kind).inc()
    if change.kind == "failed":
        metrics.CONSTITUTION_REJECTED.labels(change.path.name).set(1)
        return
    metrics.CONSTITUTION_REJECTED.labels(change.path.name).set(0)
    if change.constitution_id is None:
        return
    for sample in list(metrics.CONSTITUTION_SERVING.collect())[0].samples:  # the earlier versions: 0
        if sample.labels["constitution_id"] == change.constitution_id:
            metrics.CONSTITUTION_SERVING.labels(change.constitution_id, sample.labels["digest"]).set(0)
    if change.kind != "removed" and change.digest:
        metrics.CONSTITUTION_SERVING.labels(change.constitution_id, change.digest).set(1)


def _generator(resources: Resources, access: AccessPolicy) -> Any:
    from charter.inference.policy import ServedPolicy
    from charter.servicers.generator import GeneratorServicer

    s = resources.settings.generator
    policy = ServedPolicy(
        resources.engine(),
        build=resources.engine_on,
        retire=resources.release_engine,
        drain_seconds=s.swap_drain_seconds,
        shared=resources.shares,
    )
    follow = None
    if s.follow_run_name:
        from charter.app.policy_follow import follow_trainer

        follow = functools.partial(
            follow_trainer,
            address=s.trainer_address,
            token=_trainer_token(s.trainer_token_file),
            run_name=s.follow_run_name,
            poll_seconds=s.follow_poll_seconds,
        )
    return GeneratorServicer(
        policy,
        default_max_tokens=s.default_max_tokens,
        resolve=functools.partial(_policy_folder, resources.settings),
        follow=follow,
    )


def _trainer_token(path: Path | None) -> str | None:
    return read_token(path, "generator.trainer_token_file") if path else None


async def _policy_folder(settings: CharterSettings, ref: str) -> tuple[str, str]:
    """A `SwapModel` reference -> (its model folder, the name to serve it by): `run:<id>` (a
    continuous run's round: `run:<id>@<n>`, `@latest`) through the trainer service
    (`generator.trainer_address`) or the local run store; a folder as it is."""
    from charter.app.trainer_runs import model_ref

    g = settings.generator
    token = _trainer_token(g.trainer_token_file)
    return await model_ref(ref, settings, address=g.trainer_address or None, token=token, field="model")


def _critic(resources: Resources, access: AccessPolicy) -> Any:
    from charter.servicers.critic import CriticReviserServicer

    s = resources.settings.critic
    return CriticReviserServicer(
        resources.engine(),
        resources.registry(),
        default_max_tokens=s.default_max_tokens,
        few_shot_limit=s.few_shot_limit,
    )


def _review(resources: Resources, access: AccessPolicy) -> Any:
    from charter.servicers.review import ReviewServicer

    return ReviewServicer.from_settings(resources.settings, access.authenticator)


def _trainer(resources: Resources, access: AccessPolicy) -> Any:
    from charter.servicers.trainer import TrainerServicer

    return TrainerServicer.from_settings(resources.settings)


def _judge(resources: Resources, access: AccessPolicy) -> Any:
    from charter.servicers.judge import JudgeServicer

    s = resources.settings.judge
    return JudgeServicer(
        resources.engine(),
        resources.registry(),
        tie_margin=s.tie_margin,
        few_shot_limit=s.few_shot_limit,
        cot_max_tokens=s.cot_max_tokens,
        max_requests_in_flight=s.max_requests_in_flight,
        method=s.method,
        contrastive_beta=s.contrastive_beta,
        logit_scale=s.logit_scale,
    )


SERVICE = ("service",)
REVIEWER = ("reviewer",)
ADMIN = ("admin",)

ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "generator": {"Generate": SERVICE, "SwapModel": ADMIN, "PushWeights": ADMIN},
    "critic-reviser": {"CritiqueRevise": SERVICE, "CritiqueReviseStream": SERVICE},
    "judge": {"Compare": SERVICE, "CompareStream": SERVICE},
    "review": {
        "Submit": SERVICE,
        "StreamLabels": SERVICE,
        "Claim": REVIEWER,
        "Decide": REVIEWER,
        "Release": REVIEWER,
        "Stats": ("reviewer", "service"),
    },
    "trainer": {
        name: SERVICE
        for name in ("StartRun", "WatchRun", "GetRun", "ListRuns", "CancelRun", "ResumeRun", "ListRounds")
    },
}
"""Who may call what, by service and method; admin may call everything, a method not listed only admin."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    full_name: str
    add: Callable[[Any, aio.Server], None]
    base_servicer: type
    build: Callable[[Resources, AccessPolicy], Any]
    """Builds the servicer (given the access policy, for a service that also serves a web page)."""
    settings_section: str
    """The settings section with the service's `tokens` and `tokens_file`."""
    uses_constitutions: bool = False
    always_authenticate: bool = False

    def access(self, settings: CharterSettings) -> AccessPolicy:
        section = getattr(settings, self.settings_section)
        return access_policy(
            ROLES[self.name],
            section.tokens,
            section.tokens_file,
            always=self.always_authenticate,
            require_tokens_off_loopback=not getattr(section, "allow_unauthenticated", True),
        )

    def registration(self, servicer: Any | None = None, access: AccessPolicy | None = None) -> Registration:
        """`servicer` (default: the generated base, every RPC UNIMPLEMENTED) served under this
        service's name, with `access` checked on every call."""
        servicer = servicer if servicer is not None else self.base_servicer()
        lifecycle = servicer if hasattr(servicer, "drain") else None
        probe = getattr(servicer, "healthy", None)
        return Registration(
            self.full_name, lambda server: self.add(servicer, server), lifecycle, access, probe=probe
        )

    def registration_for_settings(self, settings: CharterSettings) -> Registration:
        """The service built from `settings` alone (services that need no engine, e.g. review)."""
        return self.registration_for(Resources(settings))

    def registration_for(self, resources: Resources) -> Registration:
        if self.uses_constitutions:
            resources.registry()
        access = self.access(resources.settings)
        return self.registration(self.build(resources, access), access)


def _full_name(module: Any, service: str) -> str:
    name: str = module.DESCRIPTOR.services_by_name[service].full_name
    return name


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "generator",
            _full_name(generator_pb2, "GeneratorService"),
            generator_pb2_grpc.add_GeneratorServiceServicer_to_server,
            generator_pb2_grpc.GeneratorServiceServicer,
            build=_generator,
            settings_section="generator",
        ),
        ServiceSpec(
            "critic-reviser",
            _full_name(critic_pb2, "CriticReviserService"),
            critic_pb2_grpc.add_CriticReviserServiceServicer_to_server,
            critic_pb2_grpc.CriticReviserServiceServicer,
            build=_critic,
            settings_section="critic",
            uses_constitutions=True,
        ),
        ServiceSpec(
            "judge",
            _full_name(judge_pb2, "JudgeService"),
            judge_pb2_grpc.add_JudgeServiceServicer_to_server,
            judge_pb2_grpc.JudgeServiceServicer,
            build=_judge,
            settings_section="judge",
            uses_constitutions=True,
        ),
        ServiceSpec(
            "review",
            _full_name(review_pb2, "ReviewService"),
            review_pb2_grpc.add_ReviewServiceServicer_to_server,
            review_pb2_grpc.ReviewServiceServicer,
            build=_review,
            settings_section="review",
            always_authenticate=True,
        ),
        ServiceSpec(
            "trainer",
            _full_name(trainer_pb2, "TrainerService"),
            trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            trainer_pb2_grpc.TrainerServiceServicer,
            build=_trainer,
            settings_section="trainer",
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

"""One auth path for all five services: every RPC of every service, called with no token, with a
token of the wrong role and with the right role, through the real servers the catalog builds (the
engine services on a scripted engine, review and trainer on SQLite)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from charter.app.catalog import ROLES, SERVICES, Resources
from charter.client.channel import open_channel
from charter.core.errors import FailedPrecondition
from charter.core.server import CharterServer
from charter.core.settings import CharterSettings, ServerSettings, load_settings
from google.protobuf import message_factory, symbol_database
from structlog.testing import capture_logs

from tests.support.fake_engine import FakeEngine

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKENS = [
    {"name": "pipeline", "role": "service", "token": "service-token-0123456789"},
    {"name": "alice", "role": "reviewer", "token": "reviewer-token-0123456789"},
    {"name": "root", "role": "admin", "token": "admin-token-0123456789"},
]
BY_ROLE = {t["role"]: t["token"] for t in TOKENS}
DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def guarded_settings(tmp: Path) -> CharterSettings:
    return load_settings(
        constitutions={"directory": str(ROOT / "constitutions")},
        generator={"tokens": TOKENS},
        critic={"tokens": TOKENS},
        judge={"tokens": TOKENS},
        review={"tokens": TOKENS, "database_url": f"sqlite:///{tmp / 'review.db'}", "web_port": None},
        trainer={"tokens": TOKENS, "database_url": f"sqlite:///{tmp / 'trainer.db'}",
                 "runs_dir": str(tmp / "runs")},
    )  # fmt: skip


def all_services(settings: CharterSettings) -> contextlib.AbstractAsyncContextManager[int]:
    return all_services_named(settings, list(SERVICES), host="127.0.0.1")


def rpcs() -> list[tuple[str, str]]:
    return [(name, method) for name, table in ROLES.items() for method in table]


def test_the_role_table_covers_every_rpc_of_every_service() -> None:
    for name, spec in SERVICES.items():
        service = symbol_database.Default().pool.FindServiceByName(spec.full_name)
        assert set(ROLES[name]) == {m.name for m in service.methods}, name


async def call(port: int, service: str, method: str, token: str | None) -> grpc.StatusCode:
    """One call with an empty request; the status it ends with (OK when it answered)."""
    spec = SERVICES[service]
    descriptor = symbol_database.Default().pool.FindServiceByName(spec.full_name).methods_by_name[method]
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    path = f"/{spec.full_name}/{method}"
    async with open_channel(f"127.0.0.1:{port}", token=token) as channel:
        try:
            if descriptor.server_streaming:
                stream = channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                              response_deserializer=response_type.FromString)  # fmt: skip
                async for _ in stream(request_type(), timeout=5):
                    break
            else:
                unary = channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                            response_deserializer=response_type.FromString)  # fmt: skip
                await unary(request_type(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_every_rpc_needs_a_token_of_the_right_role(tmp_path: Path) -> None:
    async with all_services(guarded_settings(tmp_path)) as port:
        for service, method in rpcs():
            allowed = ROLES[service][method]
            assert await call(port, service, method, None) is grpc.StatusCode.UNAUTHENTICATED, (service, method)
            assert await call(port, service, method, "not-a-token-at-all") is grpc.StatusCode.UNAUTHENTICATED
            wrong = [r for r in ("service", "reviewer") if r not in allowed]
            for role in wrong:
                assert await call(port, service, method, BY_ROLE[role]) is grpc.StatusCode.PERMISSION_DENIED, (
                    service, method, role,
                )  # fmt: skip
            for role in (*allowed, "admin"):
                code = await call(port, service, method, BY_ROLE[role])
                assert code not in DENIED, (service, method, role, code)


async def test_the_handler_sees_who_called(tmp_path: Path) -> None:
    """Claim runs as the reviewer the token names: the ledger is empty, so the answer is an empty
    claim — and with the service token the same call is refused before it reaches the ledger."""
    from charter_proto.review.v1 import review_pb2, review_pb2_grpc

    async with all_services(guarded_settings(tmp_path)) as port:
        async with open_channel(f"127.0.0.1:{port}", token=BY_ROLE["reviewer"]) as channel:
            reply = await review_pb2_grpc.ReviewServiceStub(channel).Claim(review_pb2.ClaimRequest())
            assert not reply.HasField("item")
        assert await call(port, "review", "Claim", BY_ROLE["service"]) is grpc.StatusCode.PERMISSION_DENIED


async def test_without_tokens_engine_services_and_trainer_are_open_on_loopback(tmp_path: Path) -> None:
    settings = load_settings(
        constitutions={"directory": str(ROOT / "constitutions")},
        review={"database_url": f"sqlite:///{tmp_path / 'review.db'}", "web_port": None},
        trainer={"database_url": f"sqlite:///{tmp_path / 'trainer.db'}", "runs_dir": str(tmp_path / "runs")},
    )
    async with all_services(settings) as port:
        for service, method in rpcs():
            code = await call(port, service, method, None)
            if service == "review":  # no tokens at all: the review service refuses every call
                assert code is grpc.StatusCode.UNAUTHENTICATED, method
            else:
                assert code not in DENIED, (service, method, code)


async def test_the_trainer_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    base = {"database_url": f"sqlite:///{tmp_path / 'trainer.db'}", "runs_dir": str(tmp_path / "runs")}
    settings = load_settings(trainer=base)
    server = CharterServer(
        ServerSettings(host="0.0.0.0", port=0, metrics_port=None, drain_seconds=0),
        [SERVICES["trainer"].registration_for(Resources(settings))],
    )
    with pytest.raises(FailedPrecondition, match="allow_unauthenticated"):
        await server.start()
    opted_out = load_settings(trainer={**base, "allow_unauthenticated": True})
    with capture_logs() as logs:
        async with all_services_named(opted_out, ["trainer"], host="0.0.0.0"):
            pass
    warnings = [e for e in logs if e["event"] == "server.unauthenticated"]
    assert [w["service"] for w in warnings] == [SERVICES["trainer"].full_name]


async def test_an_open_engine_service_on_a_public_address_warns_loudly(tmp_path: Path) -> None:
    settings = load_settings(constitutions={"directory": str(ROOT / "constitutions")})
    with capture_logs() as logs:
        async with all_services_named(settings, ["judge"], host="0.0.0.0"):
            pass
    assert [e["service"] for e in logs if e["event"] == "server.unauthenticated"] == [
        SERVICES["judge"].full_name
    ]
    with capture_logs() as logs:  # tokens configured: nothing to warn about
        async with all_services_named(guarded_settings(tmp_path), ["judge"], host="0.0.0.0"):
            pass
    assert not [e for e in logs if e["event"] == "server.unauthenticated"]


@contextlib.asynccontextmanager
async def all_services_named(settings: CharterSettings, names: list[str], host: str) -> AsyncIterator[int]:
    resources = Resources(settings, engine=FakeEngine())
    server = CharterServer(
        ServerSettings(host=host, port=0, metrics_port=None, drain_seconds=0),
        [SERVICES[n].registration_for(resources) for n in names],
    )
    try:
        port = await server.start()
        try:
            yield port
        finally:
            await server.stop(0)
    finally:
        await resources.close()


async def test_a_remote_pipeline_sends_its_token_file(tmp_path: Path) -> None:
    """SL-CAI in remote mode against a generator and critic-reviser that check tokens: with
    `services.token_file` every prompt is done; without it the run stops at once, saying why."""
    from charter.core.errors import CharterError
    from charter.pipelines import sl_cai
    from charter.pipelines.spec import SlCaiSpec

    from tests.support.hh import HH_DEV

    token_file = tmp_path / "token"
    token_file.write_text(BY_ROLE["service"] + "\n")
    async with all_services_named(guarded_settings(tmp_path), ["generator", "critic-reviser"], "127.0.0.1") as port:
        address = f"127.0.0.1:{port}"

        def spec(name: str, **services: object) -> SlCaiSpec:
            return SlCaiSpec.model_validate({
                "kind": "sl-cai", "name": name, "constitution": "harmless", "rounds": 1,
                "source": {"path": str(HH_DEV), "format": "hh-rlhf", "limit": 2},
                "output": str(tmp_path / name),
                "services": {"mode": "remote", "generator": address, "critic_reviser": address, "retries": 0,
                             **services},
            })  # fmt: skip

        summary = await sl_cai.run(spec("with-token", token_file=str(token_file)), load_settings())
        assert summary.written == 2 and summary.row_errors == 0
        with pytest.raises(CharterError, match="UNAUTHENTICATED"):
            await sl_cai.run(spec("without-token"), load_settings())

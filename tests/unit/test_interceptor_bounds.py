"""The interceptor's answers to hostile requests: a request that does not parse is INVALID_ARGUMENT
(after the caller is checked), for a unary and a server-streaming RPC; an error message that echoes
an overlong value is shortened so a default client still receives the status; `one_line` renders a
huge or deep value in time that does not grow with it."""

from __future__ import annotations

import time

import grpc
import pytest
from charter.core.auth import access_policy
from charter.core.errors import MAX_MESSAGE_BYTES, NotFound, bounded, one_line
from charter.core.interceptors import ServerInterceptor, status_for
from charter.core.settings import ReviewerToken
from charter_proto.trainer.v1 import trainer_pb2 as tp
from grpc import aio

SERVICE = "test.v1.Echo"
TOKEN = "interceptor-test-token-0123456789"


async def get(request: tp.GetRunRequest, context: aio.ServicerContext) -> tp.GetRunResponse:
    raise NotFound(f"run {request.run_id} does not exist", field="run_id", value=request.run_id)


async def watch(request: tp.GetRunRequest, context: aio.ServicerContext):
    yield tp.GetRunResponse()
    raise NotFound(f"run {request.run_id} does not exist")


@pytest.fixture
async def channel():
    policy = access_policy(
        {"Get": ("admin",), "Watch": ("admin",)},
        [ReviewerToken(name="t", role="admin", token=TOKEN)],
        None,
    )
    server = aio.server(interceptors=[ServerInterceptor({SERVICE: policy})])
    handlers = {
        "Get": grpc.unary_unary_rpc_method_handler(
            get, tp.GetRunRequest.FromString, tp.GetRunResponse.SerializeToString
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch, tp.GetRunRequest.FromString, tp.GetRunResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:  # gRPC's default metadata limits
        yield ch
    await server.stop(0)


AUTH = (("authorization", f"Bearer {TOKEN}"),)
RAW = (lambda b: b), (lambda b: b)


async def call(channel: aio.Channel, method: str, payload: bytes, md) -> tuple[grpc.StatusCode, str]:
    try:
        if method == "Get":
            await channel.unary_unary(f"/{SERVICE}/Get", *RAW)(payload, metadata=md, timeout=10)
        else:
            async for _ in channel.unary_stream(f"/{SERVICE}/Watch", *RAW)(payload, metadata=md, timeout=10):
                pass
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", ["Get", "Watch"])
@pytest.mark.parametrize(
    "payload", [b"\x0a\x01\xff", b"\x0a\x05ab", b"\xff\xff\xff"], ids=["utf8", "cut", "junk"]
)
async def test_a_request_that_does_not_parse_is_invalid_argument(
    channel, method: str, payload: bytes
) -> None:
    code, details = await call(channel, method, payload, AUTH)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("request: the message does not parse") and len(details) < 300


@pytest.mark.parametrize("method", ["Get", "Watch"])
async def test_the_caller_is_checked_before_the_request_is_refused(channel, method: str) -> None:
    code, _ = await call(channel, method, b"\x0a\x01\xff", ())
    assert code is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", ["Get", "Watch"])
@pytest.mark.parametrize(
    "value", ["x" * 20_000, "é" * 20_000, "x y " * 5_000], ids=["ascii", "utf8", "words"]
)
async def test_an_overlong_value_in_an_error_reaches_a_default_client(
    channel, method: str, value: str
) -> None:
    code, details = await call(channel, method, tp.GetRunRequest(run_id=value).SerializeToString(), AUTH)
    assert code is grpc.StatusCode.NOT_FOUND, (code, details[:200])
    assert details.startswith("run ") and len(details.encode()) < MAX_MESSAGE_BYTES + 100


def test_bounded_keeps_short_messages_and_names_the_length() -> None:
    assert bounded("run r-1 does not exist") == "run r-1 does not exist"
    text = bounded(f"run {'x' * 5000} does not exist")
    assert text.endswith("… (5000 characters) does not exist") and len(text) < 200
    assert status_for(NotFound("a " * 10_000))[1].endswith("(20000 characters in all)")


def fan_out(levels: int) -> list:
    node: list = ["x"] * 9
    for _ in range(levels):
        node = [node] * 9
    return node


def test_one_line_renders_a_huge_or_deep_value_quickly() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    cycle: list = []
    cycle.append(cycle)
    started = time.perf_counter()
    for value in (fan_out(12), deep, cycle, {"k": fan_out(12)}, 10**100_000, "x" * 10**7):
        assert len(one_line(value)) <= 80
    assert time.perf_counter() - started < 0.5
    assert one_line([1, "a", (2,), {"b": None}]) == repr([1, "a", (2,), {"b": None}])

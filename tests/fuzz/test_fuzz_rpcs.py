"""Every RPC of the five services, fuzzed through one real server (issue 18, "Fuzz"): hypothesis builds
requests from the message descriptors (extreme numbers, NaN and infinities, unknown enum values, long
and odd strings, paths and addresses that reach outside, repeated fields past the limits, odd
authorization headers and metadata) and sends them as raw bytes through a generic call. After every
example: an error is one of the documented status codes (docs/settings.md, "Errors → status codes"),
never INTERNAL or UNKNOWN; the server process is alive and health is SERVING overall and for the
service; the server's RSS grew less than 300 MB; it opened no file outside its roots and made no
connection or name lookup for another host (`audit`, in the server process).

One `CharterServer` (`tests.fuzz.server`, a process of its own) hosts the generator, critic-reviser and
judge (the scripted `FakeEngine`), the review service (SQLite ledger) and the trainer
(`trainer_settings`; a StartRun that is accepted is cancelled at once, before its worker trains). The
RPCs come from the generated descriptors of every `charter_proto` module, so a new RPC is fuzzed at
once; each is fuzzed from random messages and from mutants of a request it accepts (`bases`)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import charter_proto
import grpc
import psutil
import pytest
from charter.app.catalog import ROLES, SERVICES
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.bases import bases
from tests.fuzz.server import TOKENS
from tests.fuzz.strategies import broken_bytes, metadata, requests
from tests.support import ROOT, subprocess_env

pytestmark = pytest.mark.integration

EXAMPLES = 80
"""Well-formed examples per RPC (and BROKEN_EXAMPLES broken ones): ~1.5 min for all 19 RPCs on 2 busy cores."""
BROKEN_EXAMPLES = 20
MAX_RSS_GROWTH = 300 * 1024 * 1024
IDLE_SECONDS = 0.5
"""A stream that sends nothing for this long is following (StreamLabels, WatchRun): the client
cancels it; that is not an error of the server."""
UNARY_TIMEOUT = 30.0
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}  # fmt: skip
"""docs/settings.md, "Errors → status codes" (everything else is INTERNAL, a bug)."""
SETTINGS = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)  # fmt: skip


def all_methods() -> list[MethodDescriptor]:
    """Every RPC of every service in the generated `charter_proto` package."""
    out = []
    for info in pkgutil.walk_packages(charter_proto.__path__, "charter_proto."):
        if info.name.endswith("_pb2"):
            for service in importlib.import_module(info.name).DESCRIPTOR.services_by_name.values():
                out.extend(service.methods)
    return out


METHODS = all_methods()
BASES = bases()
STATS: dict[str, Counter[str]] = {}
DETAILS: dict[str, str] = {}
"""The first details seen for each (RPC, error code): what the summary shows."""


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def short_name(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}/{method.name}"


class Hosted:
    """The five services in a server process of their own (`tests.fuzz.server`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = (folder / "server.log").open("wb")
        env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.server", str(folder)], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (folder / "port").exists():
            assert self.process.poll() is None, f"the server exited: {self.log_tail()}"
            assert time.monotonic() < deadline, f"the server did not start: {self.log_tail()}"
            time.sleep(0.2)
        self.port = int((folder / "port").read_text())
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.accepted_runs: list[str] = []
        self.memory = psutil.Process(self.process.pid)
        self.baseline = self.memory.memory_info().rss
        self.peak = 0
        self.trace: list[tuple[int, int]] = []
        """(inputs so far, RSS growth in MB) every 200 inputs."""

    def log_tail(self, chars: int = 6000) -> str:
        self.log.flush()
        return (self.folder / "server.log").read_text(errors="replace")[-chars:]

    def audit_findings(self) -> str:
        return (self.folder / "audit.log").read_text(errors="replace")

    def close(self) -> None:
        self.channel.close()
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()

    def serving(self, service: str) -> bool:
        for name in ("", service):
            reply = self.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
        return True

    def call(self, method: MethodDescriptor, payload: bytes, md) -> tuple[grpc.StatusCode, str, list[bytes]]:
        """One call with a raw request; (code, details, responses). A following stream is cancelled
        after IDLE_SECONDS without a message (code OK). A client-streaming RPC gets the request as a
        stream of one message."""
        ident = (lambda b: b), (lambda b: b)
        path = path_of(method)
        assert not (method.client_streaming and method.server_streaming), f"{path}: bidirectional: not fuzzed yet"
        if method.client_streaming:
            try:
                response = self.channel.stream_unary(path, *ident)(
                    iter([payload]), metadata=md, timeout=UNARY_TIMEOUT
                )
            except grpc.RpcError as err:
                return err.code(), err.details() or "", []
            return grpc.StatusCode.OK, "", [response]
        if not method.server_streaming:
            try:
                response = self.channel.unary_unary(path, *ident)(payload, metadata=md, timeout=UNARY_TIMEOUT)
            except grpc.RpcError as err:
                return err.code(), err.details() or "", []
            return grpc.StatusCode.OK, "", [response]
        stream = self.channel.unary_stream(path, *ident)(payload, metadata=md, timeout=UNARY_TIMEOUT)
        idle = threading.Event()
        out: list[bytes] = []

        def cancel() -> None:
            idle.set()
            stream.cancel()

        timer = threading.Timer(IDLE_SECONDS, cancel)
        timer.start()
        try:
            for response in stream:
                timer.cancel()
                out.append(response)
                if len(out) >= 500:
                    cancel()
                    break
                timer = threading.Timer(IDLE_SECONDS, cancel)
                timer.start()
        except grpc.RpcError as err:
            if not (idle.is_set() and err.code() == grpc.StatusCode.CANCELLED):
                return err.code(), err.details() or "", out
        finally:
            timer.cancel()
        return grpc.StatusCode.OK, "", out

    def cancel_accepted(self, method: MethodDescriptor, responses: list[bytes]) -> None:
        """A StartRun or ResumeRun that was accepted: cancel the run before its worker trains."""
        if method.containing_service.name != "TrainerService" or method.name not in ("StartRun", "ResumeRun"):
            return
        reply = (tp.StartRunResponse if method.name == "StartRun" else tp.ResumeRunResponse).FromString(
            responses[0]
        )
        self.accepted_runs.append(reply.run.id)
        stub = self.channel.unary_unary("/charter.trainer.v1.TrainerService/CancelRun",
                                        tp.CancelRunRequest.SerializeToString, tp.CancelRunResponse.FromString)  # fmt: skip
        stub(tp.CancelRunRequest(run_id=reply.run.id, reason="fuzz"),
             metadata=(("authorization", f"Bearer {TOKENS['admin']}"),), timeout=30)  # fmt: skip


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory):
    hosted = Hosted(tmp_path_factory.mktemp("fuzz-rpcs"))
    try:
        yield hosted
    finally:
        hosted.close()
        summary = {
            "rpcs": len(STATS), "inputs": sum(sum(c.values()) for c in STATS.values()),
            "rss_growth_mb": round(hosted.peak / 2**20, 1), "accepted_runs": len(hosted.accepted_runs), "rss_trace": hosted.trace,
            "codes": {rpc: dict(c) for rpc, c in sorted(STATS.items())}, "details": DETAILS,
        }  # fmt: skip
        print("\nfuzz summary:", json.dumps(summary))


def check(hosted: Hosted, method: MethodDescriptor, payload: bytes, md) -> None:
    code, details, responses = hosted.call(method, payload, md)
    if code is grpc.StatusCode.OK:
        hosted.cancel_accepted(method, responses)
    STATS.setdefault(path_of(method), Counter())[code.name] += 1
    DETAILS.setdefault(f"{short_name(method)} {code.name}", details[:120])
    assert code is grpc.StatusCode.OK or code in DOCUMENTED, (
        f"{path_of(method)} answered {code.name}: {details}\n{hosted.log_tail()}"
    )
    assert hosted.process.poll() is None, f"the server died: {hosted.log_tail()}"
    assert hosted.serving(method.containing_service.full_name), f"health left SERVING after {path_of(method)}"
    growth = hosted.memory.memory_info().rss - hosted.baseline
    hosted.peak = max(hosted.peak, growth)
    inputs = sum(sum(c.values()) for c in STATS.values())
    if inputs % 200 == 0:
        hosted.trace.append((inputs, round(growth / 2**20)))
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth / 2**20:.0f} MB"
    assert not hosted.audit_findings(), f"after {path_of(method)}: {hosted.audit_findings()}"


def test_every_rpc_is_enumerated() -> None:
    """The descriptors name exactly the five services the catalog serves, with the RPCs its role
    table lists: a new RPC or service is fuzzed (and needs a role) without editing this file."""
    by_service: dict[str, set[str]] = {}
    for m in METHODS:
        by_service.setdefault(m.containing_service.full_name, set()).add(m.name)
    assert by_service == {spec.full_name: set(ROLES[name]) for name, spec in SERVICES.items()}
    assert len(METHODS) == sum(len(r) for r in ROLES.values()) == 20
    assert set(BASES) == {short_name(m) for m in METHODS}  # every RPC has a seed request


@pytest.mark.parametrize("method", METHODS, ids=path_of)
def test_fuzzed_requests_get_documented_codes(hosted: Hosted, method: MethodDescriptor) -> None:
    other = "reviewer" if method.containing_service.name != "ReviewService" else "service"

    @settings(SETTINGS, max_examples=EXAMPLES)
    @given(
        request=requests(method.input_type, BASES.get(short_name(method))),
        md=metadata(TOKENS["admin"], TOKENS[other]),
    )
    def fuzz(request, md) -> None:
        check(hosted, method, request.SerializeToString(), md)

    fuzz()


@pytest.mark.parametrize("method", METHODS, ids=path_of)
def test_broken_requests_keep_the_server_serving(hosted: Hosted, method: MethodDescriptor) -> None:
    """Invalid UTF-8 (lone surrogates included), truncated and random wire data, unknown fields:
    documented codes (INVALID_ARGUMENT for bytes that do not parse, once the caller is let in:
    test_invalid_utf8_is_invalid_argument), health SERVING, memory bounded."""
    auth = (("authorization", f"Bearer {TOKENS['admin']}"),)

    @settings(SETTINGS, max_examples=BROKEN_EXAMPLES)
    @given(
        payload=broken_bytes(method.input_type),
        md=st.just(auth) | metadata(TOKENS["admin"], TOKENS["service"]),
    )
    def fuzz(payload, md) -> None:
        check(hosted, method, payload, md)

    fuzz()


def test_invalid_utf8_is_invalid_argument(hosted: Hosted) -> None:
    """A request that does not parse is INVALID_ARGUMENT with a short message, for a unary and a
    server-streaming RPC; the caller is checked first (no token: UNAUTHENTICATED)."""
    for name in ("GetRun", "WatchRun"):
        method = next(m for m in METHODS if m.name == name)
        code, details, _ = hosted.call(
            method, b"\x0a\x01\xff", (("authorization", f"Bearer {TOKENS['admin']}"),)
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {code.name}: {details}"
        assert details.startswith("request: the message does not parse") and len(details) < 300, details
        code, details, _ = hosted.call(method, b"\x0a\x01\xff", ())
        assert code is grpc.StatusCode.UNAUTHENTICATED, f"{name} without a token: {code.name}: {details}"


def test_swap_model_with_a_long_name_is_not_internal(hosted: Hosted) -> None:
    swap = next(m for m in METHODS if m.name == "SwapModel")
    request = BASES["GeneratorService/SwapModel"].__class__(model="x" * 256)
    code, details, _ = hosted.call(
        swap, request.SerializeToString(), (("authorization", f"Bearer {TOKENS['admin']}"),)
    )
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), f"{code.name}: {details}"
    assert details.startswith("model: "), details


def test_a_non_finite_hyperparameter_is_invalid_argument(hosted: Hosted) -> None:
    start = next(m for m in METHODS if m.name == "StartRun")
    request = tp.StartRunRequest()
    request.CopyFrom(BASES["TrainerService/StartRun"])
    request.spec.hyperparameters.update({"max_steps": float("inf")})
    code, details, responses = hosted.call(
        start, request.SerializeToString(), (("authorization", f"Bearer {TOKENS['admin']}"),)
    )
    if code is grpc.StatusCode.OK:
        hosted.cancel_accepted(start, responses)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
    assert "spec.hyperparameters.max_steps" in details, details


def test_an_overlong_id_is_not_found_for_a_default_client(hosted: Hosted) -> None:
    get_run = next(m for m in METHODS if m.name == "GetRun")
    request = tp.GetRunRequest(run_id="x" * 20_000)
    code, details, _ = hosted.call(
        get_run, request.SerializeToString(), (("authorization", f"Bearer {TOKENS['admin']}"),)
    )
    assert code is grpc.StatusCode.NOT_FOUND, f"{code.name}: {details[:200]}"
    assert "(20000 characters)" in details and len(details) < 400, details[:400]

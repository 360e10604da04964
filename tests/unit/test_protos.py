"""The contracts: generated code is fresh, the protos pass `buf lint`, and each service has the RPCs
the rest of the system relies on."""

from __future__ import annotations

import subprocess
import sys

import pytest
from charter.app.catalog import SERVICES

from tests.support import ROOT, tool


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_buf_lint_passes() -> None:
    result = subprocess.run([tool("buf"), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("service", "rpcs", "streaming"),
    [
        ("generator", {"Generate", "SwapModel", "PushWeights"}, {"Generate"}),
        ("critic-reviser", {"CritiqueRevise", "CritiqueReviseStream"}, {"CritiqueReviseStream"}),
        ("judge", {"Compare", "CompareStream"}, {"CompareStream"}),
        ("review", {"Submit", "Claim", "Decide", "Release", "StreamLabels", "Stats"}, {"StreamLabels"}),
        (
            "trainer",
            {"StartRun", "WatchRun", "GetRun", "ListRuns", "CancelRun", "ResumeRun", "ListRounds"},
            {"WatchRun"},
        ),
    ],
)
def test_service_contracts(service: str, rpcs: set[str], streaming: set[str]) -> None:
    from google.protobuf import descriptor_pool

    desc = descriptor_pool.Default().FindServiceByName(SERVICES[service].full_name)
    assert {m.name for m in desc.methods} == rpcs
    assert {m.name for m in desc.methods if m.server_streaming} == streaming
    for m in desc.methods:  # one request and one response message per RPC
        assert m.input_type.name == f"{m.name}Request"
        assert m.output_type.name == f"{m.name}Response"


def test_generated_package_does_not_shadow_charter() -> None:
    import charter
    import charter_proto.common.v1.label_pb2 as label_pb2

    assert label_pb2.PreferenceLabel.__module__ == "charter_proto.common.v1.label_pb2"
    assert label_pb2.DESCRIPTOR.package == "charter.common.v1"
    assert (ROOT / "services" / "charter_proto" / "common" / "v1" / "label_pb2.pyi").exists()
    assert charter.__file__.endswith("services/charter/__init__.py")

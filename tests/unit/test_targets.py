"""gRPC target strings without a channel: the hosts a target reaches (every address of a list) and
whether it stays within an allow-list (the trainer's review and judge addresses)."""

from __future__ import annotations

import pytest
from charter.core import targets


@pytest.mark.parametrize(
    ("target", "hosts"),
    [
        ("judge:50051", ["judge"]),
        ("dns:///charter-judge.charter.svc.cluster.local:50051", ["charter-judge.charter.svc.cluster.local"]),
        ("dns:judge:50051", ["judge"]),
        ("ipv4:127.0.0.1:5001,127.0.0.1:5002,10.0.0.8:5003", ["127.0.0.1", "127.0.0.1", "10.0.0.8"]),
        ("ipv6:[::1]:5001,[fd00::2]:5002", ["::1", "fd00::2"]),
        ("[::1]:50051", ["::1"]),
        ("dns://10.0.0.53/judge:50051", ["dns://10.0.0.53/judge:50051"]),  # another resolver's name
        ("xds:///judge", ["xds:///judge"]),
        ("unix:/run/charter.sock", None),
        ("unix-abstract:charter", None),
    ],
)  # fmt: skip
def test_hosts_names_every_address(target: str, hosts: list[str] | None) -> None:
    assert targets.hosts(target) == hosts


def test_endpoints_compare_spellings_of_one_place_equal() -> None:
    same = {targets.endpoints(t) for t in ("judge:50051", "dns:///judge:50051", "dns:JUDGE:50051")}
    assert same == {frozenset({"judge:50051"})}
    assert targets.endpoints("judge") == {"judge:443"}  # gRPC's default port for a DNS name
    assert targets.endpoints("ipv4:10.0.0.7:1,10.0.0.8:2") == {"10.0.0.7:1", "10.0.0.8:2"}
    assert targets.endpoints("ipv6:[fd00::2]:1") == {"[fd00::2]:1"}
    assert targets.endpoints("dns://10.0.0.53/judge:50051") != targets.endpoints("judge:50051")


@pytest.mark.parametrize(
    ("target", "allowed", "within"),
    [
        ("dns:///judge:50051", ["judge:50051"], True),
        ("judge:50051", ["dns:///judge:50051"], True),
        ("ipv4:10.0.0.7:1,10.0.0.8:2", ["10.0.0.7:1", "ipv4:10.0.0.8:2"], True),
        ("ipv4:10.0.0.7:1,10.0.0.9:2", ["10.0.0.7:1", "10.0.0.8:2"], False),  # one address not allowed
        ("judge:50052", ["judge:50051"], False),
        ("dns://203.0.113.5/judge:50051", ["judge:50051"], False),
        ("judge:50051", ["", "review:50051"], False),
        ("ipv4:", ["10.0.0.7:1"], False),  # names no address
    ],
)  # fmt: skip
def test_within_needs_every_address_allowed(target: str, allowed: list[str], within: bool) -> None:
    assert targets.within(target, allowed) is within

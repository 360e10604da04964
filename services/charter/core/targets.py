"""What a gRPC target string names: the hosts a channel to it may reach, and whether it stays within
an allow-list. Pure string work (no resolving), for the rules that guard where a token may go.

A target is one of (https://github.com/grpc/grpc/blob/master/doc/naming.md):

- `host:port`, `[v6addr]:port` — resolved by DNS (the default scheme) to every address the name has;
- `dns:///host:port` (the same), `dns:host:port`, or `dns://server/host:port` (asks that DNS server);
- `ipv4:a:port,b:port` / `ipv6:[a]:port,[b]:port` — a static list of addresses;
- `unix:path`, `unix-abstract:name` — a socket on this machine.

A channel spreads its calls over every address the target resolves to when its load-balancing policy
is `round_robin` (`charter.client.channel`); so a rule about "the address" must hold for each of them.

Example:
    hosts("ipv4:127.0.0.1:5001,10.0.0.8:5002")          # ["127.0.0.1", "10.0.0.8"]
    within("dns:///judge:50051", ["judge:50051"])       # True: the same name, the same port
"""

from __future__ import annotations

from collections.abc import Iterable

LOCAL_SCHEMES = ("unix:", "unix-abstract:")
DEFAULT_PORT = "443"
"""The port gRPC dials for a DNS name given without one."""


def _split(address: str) -> tuple[str, str | None]:
    """(host, port or None) of `host:port`, `[v6]:port`, `host` or a bare IPv6 address."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            return address, None
        rest = address[end + 1 :]
        return address[1:end], rest[1:] if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or ":" in host:  # no port, or a bare IPv6 address
        return address, None
    return host, port


def _addresses(target: str) -> tuple[list[str], str] | None:
    """(the addresses, how they are found: "dns", "dns://server", "ipv4", "ipv6", or "other:" for a
    scheme this module does not know); None for a socket on this machine."""
    if target.startswith(LOCAL_SCHEMES):
        return None
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return [a for a in target[len(scheme) :].split(",") if a], scheme[:-1]
    if target.startswith("dns://"):
        authority, _, name = target[len("dns://") :].partition("/")
        return [name], f"dns://{authority}" if authority else "dns"
    if target.startswith("dns:"):
        return [target[len("dns:") :]], "dns"
    scheme, sep, rest = target.partition(":")
    if sep and scheme.isalpha() and rest.startswith("//"):  # xds:///name, a custom resolver's
        return [target], "other:"
    return [target], "dns"


def hosts(target: str) -> list[str] | None:
    """Every host `target` names (a name for DNS, the addresses of a static list); None for a Unix
    socket, which never leaves the machine. A target of a scheme unknown here, or a name another DNS
    server resolves (`dns://server/name:port`: "localhost" may be anything there), is its own "host",
    never loopback."""
    found = _addresses(target)
    if found is None:
        return None
    addresses, how = found
    if how == "other:" or how.startswith("dns://"):
        return [target]
    return [_split(a)[0] for a in addresses]


def endpoints(target: str) -> frozenset[str]:
    """The endpoints `target` dials, normalised so that spellings of one place compare equal:
    `judge:50051`, `dns:///judge:50051` and `dns:judge:50051` are all `judge:50051` (the host
    lower-cased, a DNS name's missing port 443). A name resolved by another DNS server
    (`dns://8.8.8.8/judge:1`) keeps that server in its endpoint: it is not the same place."""
    found = _addresses(target)
    if found is None:
        return frozenset({target})
    addresses, how = found
    if how == "other:":
        return frozenset(addresses)
    out = set()
    for address in addresses:
        host, port = _split(address)
        host = host.lower()
        port = port or (DEFAULT_PORT if how.startswith("dns") else "")
        shown = f"[{host}]" if ":" in host else host
        endpoint = f"{shown}:{port}" if port else shown
        out.add(endpoint if how in ("dns", "ipv4", "ipv6") else f"{how}/{endpoint}")
    return frozenset(out)


def within(target: str, allowed: Iterable[str]) -> bool:
    """True when every endpoint `target` dials is one an `allowed` target dials: a list of addresses
    passes only if each of them is allowed, so a token never reaches an address nobody allowed."""
    mine = endpoints(target)
    permitted: set[str] = set()
    for other in allowed:
        if other:
            permitted |= endpoints(other)
    return bool(mine) and mine <= permitted

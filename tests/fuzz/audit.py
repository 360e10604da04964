"""A process-wide audit hook (`sys.addaudithook`, PEP 578) that records, while recording is on, every
file opened outside the allowed roots and every connection or name lookup for a host other than this
one. A hook cannot be removed, so it is installed once and records only inside `recording()`; it
records from every thread (an in-process server answers on its own threads)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import sys
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ROOT


@dataclass
class Findings:
    roots: tuple[str, ...]
    opened_outside: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    opens: int = 0
    connects: int = 0
    sink: int | None = None
    """A file descriptor each finding is also written to, one line each (another process reads it)."""

    def add(self, kind: str, what: str) -> None:
        with _lock:
            (self.opened_outside if kind == "open" else self.remote).append(what)
        if self.sink is not None:  # os.write raises no audit event: the hook cannot recurse
            os.write(self.sink, f"{kind}\t{what!r}\n".encode())


_lock = threading.Lock()
_active: Findings | None = None
_installed = False
ALWAYS = (
    "/dev/null", "/dev/urandom", "/dev/random", "/proc/self/", f"/proc/{os.getpid()}/", "/usr/share/zoneinfo/",
)  # fmt: skip
"""Opened by the interpreter and the libraries whatever the input (the time zone database: the first
time a library asks for a zone)."""


def python_roots() -> list[str]:
    """The interpreter, its standard library and the virtualenv's packages."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()}
    return [str(Path(p).resolve()) for p in paths if p]


def loopback(host: str) -> bool:
    if host in ("localhost", "", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


CHILD_STAT = re.compile(r"/proc/[0-9]+/stat")
"""The trainer reads its workers' /proc/<pid>/stat to see whether they still run."""


def _inside(path: str, roots: Sequence[str]) -> bool:
    if CHILD_STAT.fullmatch(path):
        return True
    resolved = os.path.realpath(path)
    return any(resolved == r or resolved.startswith(r.rstrip("/") + "/") for r in roots) or any(
        resolved.startswith(a) or resolved == a for a in ALWAYS
    )


def _hook(event: str, args: tuple) -> None:
    findings = _active
    if findings is None:
        return
    if event == "open":
        target = args[0]
        if isinstance(target, int):  # os.fdopen of a descriptor already open
            return
        path = os.fsdecode(target)
        findings.opens += 1
        if not os.path.isabs(path):
            path = os.path.join(os.getcwd(), path)
        if not _inside(path, findings.roots):
            findings.add("open", path)
    elif event == "socket.connect":
        sock, address = args
        findings.connects += 1
        if getattr(sock, "family", None) == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else str(address)
        if not loopback(str(host)):
            findings.add("remote", f"connect {address!r}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host is not None and not loopback(str(host)):
            findings.add("remote", f"getaddrinfo {host!r}")


def install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


@contextlib.contextmanager
def recording(roots: Sequence[str | Path], sink: int | None = None) -> Iterator[Findings]:
    """Record opens outside `roots` (plus the python install and the checkout) and non-loopback
    connections until the block ends."""
    global _active
    install()
    all_roots = tuple(str(Path(r).resolve()) for r in [*roots, ROOT]) + tuple(python_roots())
    findings = Findings(all_roots, sink=sink)
    _active = findings
    try:
        yield findings
    finally:
        _active = None

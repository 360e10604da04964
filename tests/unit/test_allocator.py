"""`inference.allocator.keep_freed_memory`: glibc's `mallopt` on Linux, nothing elsewhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from charter.inference import allocator

MAPPED_BLOCKS = textwrap.dedent(
    """
    import ctypes, sys

    class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    if sys.argv[1] == "keep":
        from charter.inference.allocator import keep_freed_memory
        assert keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    libc.malloc(64 << 20)
    print(libc.mallinfo2().hblks - before)  # 1: the block got its own mmap; 0: served from the heap
    """
)


def mapped_blocks(mode: str) -> int:
    """How many mmapped blocks a 64 MiB allocation adds, in a process of its own (the setting is
    process-wide)."""
    out = subprocess.run([sys.executable, "-c", MAPPED_BLOCKS, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_once_set() -> None:
    assert sys.platform.startswith("linux")
    assert mapped_blocks("default") == 1  # glibc's default: its own mapping, unmapped when freed
    assert mapped_blocks("keep") == 0


def test_nothing_is_done_off_linux(monkeypatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False

"""glibc's allocator, set for engines that allocate and free the same large tensors at every step.

By default glibc serves a large allocation (above a threshold that adapts, at most 32 MiB) with its
own `mmap` and unmaps it when freed, so the next step's tensor of the same size faults in fresh,
zeroed pages again. On the transformers engine's decoding steps that was most of a step's time when
prompts shared a prefix: copying the key/value cache for grouped-query attention (`repeat_kv`, 8 rows ×
1,200 positions) took 20 ms a layer instead of 0.2 ms (torch profiler, docs/benchmarks.md "End to end
against the peers"). Serving such allocations from the heap and keeping freed memory there for reuse
removes it; the process keeps its peak memory mapped instead of returning it between steps.
"""

from __future__ import annotations

import ctypes
import sys

import structlog

log = structlog.get_logger("charter.inference")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
THRESHOLD = 1 << 30


def keep_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Have glibc's malloc serve allocations of up to `threshold` bytes from its heap and keep up to
    `threshold` bytes of freed memory for reuse (process-wide, `mallopt`). Returns whether it took
    effect: False off Linux or on a C library without `mallopt` (musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    log.debug("inference.allocator.kept", done=done, threshold=threshold)
    return done

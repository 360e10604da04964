"""The machine and library versions an evaluation ran on, for its JSON (results differ between CPUs)."""

from __future__ import annotations

import os
import platform
import sys

from charter import __version__


def versions() -> dict[str, str]:
    out = {"charter": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "vllm", "trl"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "")
    return out


def machine() -> dict[str, object]:
    processor = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            processor = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), processor
            )
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu": processor,
        "cpus": os.cpu_count(),
    }

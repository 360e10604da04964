"""`inference.dtype: auto`: bfloat16 only where it is native (a GPU, AVX512_BF16 or AMX), else float32."""

from __future__ import annotations

from pathlib import Path

from charter.core.settings import InferenceSettings
from charter.inference.precision import cpu_flags, resolve_dtype


def test_auto_is_float32_on_a_cpu_that_emulates_bf16_and_bfloat16_where_it_is_native() -> None:
    avx2 = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
    assert resolve_dtype("auto", cuda=False, flags=avx2) == "float32"
    assert resolve_dtype("auto", cuda=False, flags=avx2 | {"avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", cuda=False, flags=avx2 | {"amx_bf16", "amx_tile"}) == "bfloat16"
    assert resolve_dtype("auto", cuda=True, flags=avx2) == "bfloat16"
    assert resolve_dtype("float16", cuda=False, flags=avx2) == "float16"  # an explicit choice stands
    assert InferenceSettings().dtype == "auto"


def test_cpu_flags_read_the_flags_line_and_are_empty_without_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert resolve_dtype("auto", cuda=False, flags=cpu_flags(tmp_path / "missing")) == "float32"

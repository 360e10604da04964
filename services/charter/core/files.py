"""Writing a file so that a reader (or a run killed half-way) sees the old version or the new one,
never a torn one: write beside it, then rename over it; and a folder's content digest."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, content: str | Callable[[Path], object]) -> None:
    """Replace `path` with `content`: a text (UTF-8), or a function that writes the file it is given
    (e.g. `lambda p: pq.write_table(table, p)`). The folder is created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        if isinstance(content, str):
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
        else:
            os.close(fd)
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def folder_digest(folder: Path) -> str:
    """A folder's identity: sha256 over the names and contents of its files (not sub-folders), e.g. a
    model folder's config, weights and tokenizer — a model retrained into the same folder differs."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(f"\x1e{path.name}\x1f".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return "sha256:" + h.hexdigest()

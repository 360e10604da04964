"""Writing a file so that a reader (or a run killed half-way) sees the old version or the new one,
never a torn one: write beside it, then rename over it."""

from __future__ import annotations

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

"""A folder of constitutions that reloads files when they change.

Polling (stat every `poll_seconds`) rather than inotify, on purpose: Kubernetes updates a mounted
ConfigMap by swapping a `..data` symlink, which inotify watchers on the file names miss, while a stat
that follows the link sees the new file at once. An edit that fails validation is reported (log event
and `errors`) and the last good version keeps serving.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from charter.constitution.loader import SUFFIXES, ConstitutionError, load_constitution
from charter.constitution.schema import Constitution, content_digest
from charter.core.errors import NotFound

log = structlog.get_logger("charter.constitution")

_Signature = tuple[int, int, int, int]


@dataclass(frozen=True)
class LoadedConstitution:
    constitution: Constitution
    digest: str
    path: Path
    loaded_at: float

    @property
    def id(self) -> str:
        return self.constitution.id

    @property
    def version(self) -> str:
        return self.constitution.version


@dataclass(frozen=True)
class RegistryChange:
    kind: str  # "loaded" | "reloaded" | "removed" | "failed" | "recovered" (valid again, same text)
    path: Path
    constitution_id: str | None
    digest: str | None = None
    error: str | None = None


class ConstitutionRegistry:
    """Thread-safe; `get()` is a dictionary lookup. Use as a context manager to run the watcher."""

    def __init__(
        self,
        directory: str | Path,
        *,
        poll_seconds: float = 1.0,
        on_change: Callable[[RegistryChange], None] | None = None,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"{poll_seconds=} must be positive")
        self.directory = Path(directory)
        self.poll_seconds = poll_seconds
        self._on_change = on_change
        self._lock = threading.Lock()
        self._by_path: dict[Path, LoadedConstitution] = {}
        self._signatures: dict[Path, _Signature] = {}
        self._errors: dict[Path, ConstitutionError] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- queries -------------------------------------------------------------------------------
    def get(self, constitution_id: str) -> LoadedConstitution:
        with self._lock:
            for loaded in self._by_path.values():
                if loaded.id == constitution_id:
                    return loaded
            known = sorted(c.id for c in self._by_path.values())
        raise NotFound(
            f"unknown constitution id {constitution_id!r}; known: {', '.join(known) or 'none'}",
            field="constitution_id",
            value=constitution_id,
        )

    def all(self) -> list[LoadedConstitution]:
        with self._lock:
            return sorted(self._by_path.values(), key=lambda c: c.id)

    @property
    def errors(self) -> dict[Path, ConstitutionError]:
        """The files whose current content is rejected, with the reason."""
        with self._lock:
            return dict(self._errors)

    # ---- loading -------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            raise NotFound(
                f"{self.directory}: constitution directory does not exist", value=str(self.directory)
            )
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
        )

    @staticmethod
    def _signature(path: Path) -> _Signature | None:
        try:
            st = os.stat(path)  # follows symlinks: a ConfigMap swap changes the inode
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def refresh(self) -> list[RegistryChange]:
        """One pass over the folder: (re)load changed files, drop removed ones. Returns what changed."""
        changes: list[RegistryChange] = []
        files = self._files()
        present = set(files)
        for path in files:
            sig = self._signature(path)
            if sig is None or self._signatures.get(path) == sig:
                continue
            self._signatures[path] = sig
            changes.extend(self._load(path))
        for path in [p for p in self._signatures if p not in present]:
            del self._signatures[path]
            with self._lock:
                gone = self._by_path.pop(path, None)
                self._errors.pop(path, None)
            if gone is not None:
                log.warning("constitution.removed", path=str(path), constitution_id=gone.id)
                changes.append(RegistryChange("removed", path, gone.id, gone.digest))
        if self._on_change is not None:
            for change in changes:
                self._on_change(change)
        return changes

    def _load(self, path: Path) -> list[RegistryChange]:
        previous = self._by_path.get(path)
        try:
            constitution = load_constitution(path)
            with self._lock:
                for other_path, other in self._by_path.items():
                    if other_path != path and other.id == constitution.id:
                        raise ConstitutionError(
                            path, "id", f"already defined by {other_path.name}", constitution.id
                        )
        except ConstitutionError as err:
            with self._lock:
                self._errors[path] = err
            log.error(
                "constitution.reload.failed",
                path=str(path),
                error=str(err),
                serving_digest=previous.digest if previous else None,
            )
            return [RegistryChange("failed", path, previous.id if previous else None, error=str(err))]
        digest = content_digest(constitution)
        loaded = LoadedConstitution(constitution, digest, path, time.time())
        with self._lock:
            self._by_path[path] = loaded
            had_error = self._errors.pop(path, None) is not None
        if previous is None:
            log.info("constitution.loaded", path=str(path), constitution_id=constitution.id, digest=digest)
            return [RegistryChange("loaded", path, constitution.id, digest)]
        if previous.digest == digest:  # unchanged; or back to the serving text after a rejected edit
            if had_error:
                log.info(
                    "constitution.recovered", path=str(path), constitution_id=constitution.id, digest=digest
                )
                return [RegistryChange("recovered", path, constitution.id, digest)]
            return []
        log.info(
            "constitution.reloaded",
            path=str(path),
            constitution_id=constitution.id,
            version=constitution.version,
            digest=digest,
            previous_digest=previous.digest,
        )
        return [RegistryChange("reloaded", path, constitution.id, digest)]

    # ---- watching ------------------------------------------------------------------------------
    def start(self) -> ConstitutionRegistry:
        """Load the folder now (raising if it does not exist) and keep watching it in a thread."""
        self.refresh()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="constitution-watch", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as err:  # a vanished folder must not kill the watcher
                log.error("constitution.watch.failed", directory=str(self.directory), error=str(err))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ConstitutionRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

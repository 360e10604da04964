"""Running services see a ConfigMap or Secret edit without a restart, as the kubelet delivers it.

The kubelet's atomic writer lays a mounted ConfigMap/Secret out as

    ..2025_11_27_06_00_00.000000001/harmless.yaml   the content, in a timestamped folder
    ..data -> ..2025_11_27_06_00_00.000000001       one symlink to the current folder
    harmless.yaml -> ..data/harmless.yaml           one symlink per key

and updates it by writing a new timestamped folder, pointing a temporary `..data_tmp` at it, renaming
that over `..data` (the atomic swap), adding/removing the per-key links and deleting the old folder.
`KubeletVolume` below does exactly that; the registry (constitutions) and the review service's
tokens file are then watched through it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from charter.constitution.registry import ConstitutionRegistry, RegistryChange
from charter.core.auth import Authenticator
from charter.core.errors import Unauthenticated

pytestmark = pytest.mark.integration


class KubeletVolume:
    """A ConfigMap/Secret volume as the kubelet writes it (pkg/volume/util/atomic_writer.go)."""

    def __init__(self, mount: Path, files: dict[str, str]) -> None:
        self.mount = mount
        mount.mkdir()
        self._generation = 0
        self.update(files)

    def update(self, files: dict[str, str]) -> None:
        self._generation += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{self._generation:09d}"
        new = self.mount / f"..{stamp}"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text, encoding="utf-8")
        data = self.mount / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.mount / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, data)  # the atomic swap
        for name in files:
            link = self.mount / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for link in self.mount.iterdir():
            if not link.name.startswith("..") and link.name not in files:
                link.unlink()
        if old is not None:
            shutil.rmtree(self.mount / old)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        time.sleep(0.02)


def test_constitution_configmap_edits_reach_a_running_registry(
    constitution_dir: Path, tmp_path: Path
) -> None:
    harmless = (constitution_dir / "harmless.yaml").read_text(encoding="utf-8")
    helpful = (constitution_dir / "helpful-honest.yaml").read_text(encoding="utf-8")
    volume = KubeletVolume(tmp_path / "mounted", {"harmless.yaml": harmless})
    changes: list[RegistryChange] = []
    seen = threading.Lock()

    def record(change: RegistryChange) -> None:
        with seen:
            changes.append(change)

    registry = ConstitutionRegistry(volume.mount, poll_seconds=0.05, on_change=record)
    with registry:
        first = registry.get("harmless")
        assert [c.id for c in registry.all()] == ["harmless"]  # the ..data entries are not constitutions

        # an edit (new version) arrives through the symlink swap, without restarting anything
        edited = harmless.replace('version: "1.0.0"', 'version: "1.0.1"')
        assert edited != harmless
        volume.update({"harmless.yaml": edited})
        wait_for(lambda: registry.get("harmless").version == "1.0.1")
        assert registry.get("harmless").digest != first.digest

        # an invalid edit is reported and the last good version keeps serving
        volume.update({"harmless.yaml": edited.replace("principles:", "principels:")})
        wait_for(lambda: any(c.kind == "failed" for c in changes))
        assert registry.get("harmless").version == "1.0.1"

        # a key added to the ConfigMap is loaded, a key removed is dropped
        volume.update({"harmless.yaml": edited, "helpful-honest.yaml": helpful})
        wait_for(lambda: len(registry.all()) == 2)
        volume.update({"helpful-honest.yaml": helpful})
        wait_for(lambda: [c.id for c in registry.all()] == ["helpful-honest"])
    kinds = [c.kind for c in changes]
    assert kinds.count("reloaded") >= 1 and "removed" in kinds, kinds


def test_tokens_secret_edits_reach_the_review_service(tmp_path: Path) -> None:
    def tokens(*entries: tuple[str, str, str]) -> dict[str, str]:
        listed = [{"name": n, "role": r, "token": t} for n, r, t in entries]
        return {"review-tokens.yaml": yaml.safe_dump(listed)}

    volume = KubeletVolume(tmp_path / "tokens", tokens(("ana", "reviewer", "token-ana-1")))
    auth = Authenticator([], volume.mount / "review-tokens.yaml")
    assert auth.authenticate("token-ana-1").name == "ana"
    with pytest.raises(Unauthenticated):
        auth.authenticate("token-bo-1")

    # the kubelet writes an update at least one sync period later; 50 ms keeps file times apart here
    time.sleep(0.05)
    volume.update(tokens(("ana", "reviewer", "token-ana-2"), ("bo", "admin", "token-bo-1")))
    assert auth.authenticate("token-bo-1").role == "admin"
    assert auth.authenticate("token-ana-2").name == "ana"
    with pytest.raises(Unauthenticated):
        auth.authenticate("token-ana-1")  # a rotated token stops working at once

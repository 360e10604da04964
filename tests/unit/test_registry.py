from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from charter.constitution import ConstitutionRegistry
from charter.core.errors import NotFound
from structlog.testing import capture_logs


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _wait_for(predicate, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def test_loads_folder_and_looks_up_by_id(constitution_dir: Path) -> None:
    registry = ConstitutionRegistry(constitution_dir)
    registry.refresh()
    assert {c.id for c in registry.all()} >= {"harmless", "helpful-honest"}
    assert registry.get("harmless").digest.startswith("sha256:")
    with pytest.raises(NotFound, match="unknown constitution id 'nope'; known: harmless"):
        registry.get("nope")


def test_running_registry_picks_up_edit_within_two_seconds(constitution_dir: Path) -> None:
    path = constitution_dir / "harmless.yaml"
    with ConstitutionRegistry(constitution_dir, poll_seconds=0.5) as registry:
        before = registry.get("harmless").digest
        _edit(path, 'version: "1.0.0"', 'version: "1.0.1"')
        elapsed = _wait_for(lambda: registry.get("harmless").digest != before, timeout=2.0)
        assert registry.get("harmless").version == "1.0.1"
        assert elapsed < 2.0


def test_running_registry_rejects_invalid_edit_and_logs(constitution_dir: Path) -> None:
    path = constitution_dir / "harmless.yaml"
    with capture_logs() as logs, ConstitutionRegistry(constitution_dir, poll_seconds=0.2) as registry:
        before = registry.get("harmless").digest
        _edit(path, "principles:", "principles: 12\nbogus:")
        _wait_for(lambda: path in registry.errors, timeout=2.0)
        assert registry.get("harmless").digest == before
        # fixing the file serves the fixed version again
        _edit(path, "principles: 12\nbogus:", "principles:")
        _wait_for(lambda: path not in registry.errors, timeout=2.0)
        assert registry.get("harmless").digest == before
    assert any(e["event"] == "constitution.reload.failed" and e["path"] == str(path) for e in logs)


def test_removed_file_is_dropped(constitution_dir: Path) -> None:
    registry = ConstitutionRegistry(constitution_dir)
    registry.refresh()
    (constitution_dir / "helpful-honest.yaml").unlink()
    assert [c.kind for c in registry.refresh()] == ["removed"]
    with pytest.raises(NotFound):
        registry.get("helpful-honest")


def test_second_file_with_same_id_is_rejected(constitution_dir: Path) -> None:
    (constitution_dir / "zz-copy.yaml").write_text((constitution_dir / "harmless.yaml").read_text())
    registry = ConstitutionRegistry(constitution_dir)
    registry.refresh()
    error = registry.errors[constitution_dir / "zz-copy.yaml"]
    assert "already defined by harmless.yaml" in str(error)
    assert registry.get("harmless").path.name == "harmless.yaml"


def test_configmap_symlink_swap_is_seen(tmp_path: Path, constitution_dir: Path) -> None:
    """Kubernetes mounts a ConfigMap as name -> ..data/name with ..data -> a timestamped folder,
    and updates it by re-pointing ..data. The registry must see the new content."""
    mount = tmp_path / "mount"
    mount.mkdir()
    v1 = mount / "..2026_01_01_v1"
    v2 = mount / "..2026_01_02_v2"
    for d in (v1, v2):
        d.mkdir()
        (d / "harmless.yaml").write_text((constitution_dir / "harmless.yaml").read_text())
    _edit(v2 / "harmless.yaml", 'version: "1.0.0"', 'version: "2.0.0"')
    (mount / "..data").symlink_to(v1.name)
    (mount / "harmless.yaml").symlink_to("..data/harmless.yaml")
    registry = ConstitutionRegistry(mount)
    registry.refresh()
    assert registry.get("harmless").version == "1.0.0"
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(v2.name)
    os.replace(tmp_link, mount / "..data")  # the atomic swap the kubelet does
    registry.refresh()
    assert registry.get("harmless").version == "2.0.0"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="constitution directory does not exist"):
        ConstitutionRegistry(tmp_path / "nope").start()

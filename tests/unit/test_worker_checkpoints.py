"""A resumed worker continues from the newest checkpoint that was saved whole: a folder the worker was
killed in the middle of writing is passed over (found when a service restart killed a slow save)."""

from __future__ import annotations

from pathlib import Path

from charter.app.trainer_worker import last_checkpoint


def test_the_newest_complete_checkpoint_is_chosen(tmp_path: Path) -> None:
    for step in (4, 8, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (4, 8):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-16.partial").mkdir()  # an atomic save in progress
    assert last_checkpoint(tmp_path, "trainer_state.json") == tmp_path / "checkpoint-8"
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-12"  # numeric order, not text order


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path / "checkpoints") is None
    assert last_checkpoint(tmp_path, "trainer_state.json") is None

"""asympo.files: atomic writes leave the old file or the new one, with the ordinary umask mode."""

from __future__ import annotations

import os
import stat

import pytest

from asympo import files


def test_atomic_write_replaces_the_file_with_a_normal_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "report.html"
    old = os.umask(0o022)
    try:
        files.atomic_write_text(target, "first")
        files.atomic_write_text(target, "second ✓")
        files.atomic_write_bytes(tmp_path / "w.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert (
        target.read_text(encoding="utf-8") == "second ✓" and (tmp_path / "w.bin").read_bytes() == b"\x00\x01"
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600: others may read a report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "w.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    files.atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_fsync_tree_accepts_a_directory_of_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_text("x")
    files.fsync_tree(tmp_path)  # raises on an unreadable entry; nothing else to observe portably
    with pytest.raises(FileNotFoundError):
        files.fsync_dir(tmp_path / "missing")

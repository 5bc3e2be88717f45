"""Atomic file replacement: the old file or the new one, never half, and no temporary left."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from supervisor.atomic import atomic_write_text


def test_atomic_write_replaces_the_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")

    atomic_write_text(path, "new\n")
    atomic_write_text(path, "newer\n")

    assert path.read_text() == "newer\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")

    assert path.read_text() == "old\n"


def test_atomic_write_failure_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")

    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]

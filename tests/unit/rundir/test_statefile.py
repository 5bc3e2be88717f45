"""state.json: round trip, damage, a full disk, no rewrite when only the time changed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from supervisor.rundir.statefile import StateStore


def test_state_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    state = {"phase": "running", "attempt": 2, "best_epoch": 17, "last_exit": {"classification": "cuda_oom"}}

    store.save(state)

    loaded = store.load()
    assert loaded.pop("updated_ts") > 0 and loaded == state
    text = (tmp_path / "state.json").read_text()
    assert text.endswith("}\n")


@pytest.mark.parametrize("content", [None, "", "{\"phase\": \"runn", "garbage", "[1, 2, 3]", "null", "42"])
def test_state_load_of_missing_or_garbage_is_empty(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_text(content)

    assert StateStore(path).load() == {}


def full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_state_a_full_disk_refuses_keeps_the_old_file_and_is_retried(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save({"epoch": 1})
    monkeypatch.setattr("supervisor.rundir.statefile.atomic_write_text", full_disk)
    store.save({"epoch": 2})
    assert store.load()["epoch"] == 1
    monkeypatch.undo()
    store.save({"epoch": 2})
    assert store.load()["epoch"] == 2


def test_state_is_not_rewritten_when_only_the_time_changed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save({"epoch": 1})
    first = (tmp_path / "state.json").stat().st_mtime_ns, store.load()["updated_ts"]
    store.save({"epoch": 1})
    assert ((tmp_path / "state.json").stat().st_mtime_ns, store.load()["updated_ts"]) == first
    store.save({"epoch": 2})
    assert store.load()["epoch"] == 2

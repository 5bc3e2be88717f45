"""The file observer that wakes the supervisor."""

from __future__ import annotations

import queue
from pathlib import Path

from supervisor.daemon.activity import FileActivity


def test_file_activity_wakes_on_changes_but_not_on_ignored_paths(tmp_path: Path) -> None:
    wakes: queue.Queue[str] = queue.Queue()
    own = tmp_path / "supervisor"
    own.mkdir()
    files = FileActivity([tmp_path], lambda: wakes.put("wake"), ignore=lambda p: p.startswith(str(own)),
                         min_interval_s=0.0)
    files.start()
    try:
        (own / "state.json").write_text("{}")
        (tmp_path / "training_log.txt").write_text("Epoch 1\n")
        assert wakes.get(timeout=10) == "wake"
    finally:
        files.stop()

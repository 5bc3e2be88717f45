"""Attempt logs stay bounded: the first and the newest N as they are, the ones between gzipped, nothing lost."""

from __future__ import annotations

import gzip
from pathlib import Path

from supervisor.rundir.logs import compress_old_attempt_logs


def logs(folder: Path, n: int) -> None:
    for k in range(1, n + 1):
        (folder / f"attempt-{k}.log").write_text(f"attempt {k}\n" * 100)


def test_the_first_and_the_newest_stay_the_rest_is_gzipped(tmp_path: Path) -> None:
    logs(tmp_path, 12)
    (tmp_path / "state.json").write_text("{}")
    done = compress_old_attempt_logs(tmp_path, keep=3)
    assert [p.name for p in done] == [f"attempt-{k}.log.gz" for k in range(2, 10)]
    plain = sorted(p.name for p in tmp_path.glob("attempt-*.log"))
    assert plain == ["attempt-1.log", "attempt-10.log", "attempt-11.log", "attempt-12.log"]
    assert gzip.decompress((tmp_path / "attempt-5.log.gz").read_bytes()).decode() == "attempt 5\n" * 100
    assert compress_old_attempt_logs(tmp_path, keep=3) == []  # nothing more to do
    assert (tmp_path / "state.json").is_file() and not list(tmp_path.glob(".*tmp*"))


def test_the_log_just_ended_is_never_compressed(tmp_path: Path) -> None:
    logs(tmp_path, 3)
    compress_old_attempt_logs(tmp_path, keep=0)
    assert sorted(p.name for p in tmp_path.glob("attempt-*")) == ["attempt-1.log", "attempt-2.log.gz",
                                                                    "attempt-3.log"]


def test_few_logs_or_no_folder_change_nothing(tmp_path: Path) -> None:
    logs(tmp_path, 2)
    assert compress_old_attempt_logs(tmp_path, keep=20) == []
    assert compress_old_attempt_logs(tmp_path / "missing", keep=1) == []

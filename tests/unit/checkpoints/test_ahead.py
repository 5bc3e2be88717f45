"""Verification ahead: coalesced, one at a time, and a relaunch can wait for the one running."""

from __future__ import annotations

import threading
from pathlib import Path

from supervisor.checkpoints.ahead import AheadVerifier


class Verifier:
    """Records each batch; the first call blocks until released, so submissions pile up behind it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.done = threading.Semaphore(0)

    def __call__(self, paths: list[Path]) -> None:
        self.batches.append([p.name for p in paths])
        self.started.set()
        self.release.wait(10)
        self.done.release()


def files(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        out.append(tmp_path / name)
    return out


def test_changes_while_one_verification_runs_are_coalesced_into_the_next(tmp_path: Path) -> None:
    v = Verifier()
    ahead = AheadVerifier(v, settle_s=0.0, rest_factor=0.0)
    ahead.start()
    try:
        latest, best = files(tmp_path, "checkpoint_latest.pth", "checkpoint_best.pth")
        ahead.submit([latest])
        assert v.started.wait(10)
        ahead.submit([best])
        ahead.submit([latest])  # written again: one more look at both, not two
        v.release.set()
        assert v.done.acquire(timeout=10) and v.done.acquire(timeout=10)
        assert v.batches == [["checkpoint_latest.pth"], ["checkpoint_best.pth", "checkpoint_latest.pth"]]
    finally:
        ahead.stop()


def test_settle_waits_for_the_running_verification_and_drops_what_is_pending(tmp_path: Path) -> None:
    v = Verifier()
    ahead = AheadVerifier(v, settle_s=0.0, rest_factor=0.0)
    ahead.start()
    try:
        (latest,) = files(tmp_path, "checkpoint_latest.pth")
        ahead.submit([latest])
        assert v.started.wait(10)
        assert ahead.settle(timeout_s=0.0) is False  # still running
        ahead.submit([latest])
        threading.Timer(0.05, v.release.set).start()
        assert ahead.settle(timeout_s=10) is True
        assert v.done.acquire(timeout=10)
        assert ahead.runs == 1  # the pending resubmission was dropped: the relaunch verifies itself
    finally:
        ahead.stop()


def test_files_gone_by_their_turn_are_skipped_and_a_failing_verification_is_not_fatal(tmp_path: Path) -> None:
    seen: list[list[Path]] = []
    finished = threading.Event()

    def verify(paths: list[Path]) -> None:
        seen.append(paths)
        finished.set()
        raise RuntimeError("the probe broke")

    ahead = AheadVerifier(verify, settle_s=0.0, rest_factor=0.0)
    ahead.start()
    try:
        ahead.submit([tmp_path / "gone.pth"])
        assert finished.wait(10)
        assert ahead.settle(timeout_s=10)
        assert seen == [[]]
    finally:
        ahead.stop()

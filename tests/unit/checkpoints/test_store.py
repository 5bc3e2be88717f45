"""CheckpointStore and atomic_copy on a real run layout in tmp_path: nothing deleted, nothing half-written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor import atomic
from supervisor.atomic import atomic_copy
from supervisor.checkpoints import store as ckptstore
from supervisor.checkpoints.store import CheckpointStore
from supervisor.layout import RunLayout


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    run = RunLayout(results=tmp_path / "results", dataset_name="Dataset901_Tiny", trainer="nnUNetTrainer",
                    plans="nnUNetPlans", configuration="3d_fullres", fold=0)
    run.fold_dir.mkdir(parents=True)
    return run


@pytest.fixture
def store(layout: RunLayout) -> CheckpointStore:
    return CheckpointStore(layout)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every aside in the same second, so that name collisions are certain rather than likely."""
    monkeypatch.setattr(ckptstore, "time", SimpleNamespace(strftime=lambda fmt: "20250101-120000"))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted or failed copy would leave behind."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# --- candidates -------------------------------------------------------------------------------------------------


def test_candidates_in_nnunet_order_then_snapshots(layout: RunLayout, store: CheckpointStore) -> None:
    best = write(layout.checkpoint("checkpoint_best.pth"), b"best")
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"latest")
    final = write(layout.checkpoint("checkpoint_final.pth"), b"final")
    snap_late = write(store.snapshot_dir / "checkpoint_latest.epoch000120.pth", b"120")
    snap_early = write(store.snapshot_dir / "checkpoint_latest.epoch000050.pth", b"50")

    assert store.candidates() == [final, latest, best, snap_early, snap_late]


def test_candidates_skip_what_is_not_there(layout: RunLayout, store: CheckpointStore) -> None:
    best = write(layout.checkpoint("checkpoint_best.pth"), b"best")

    assert store.candidates() == [best]
    assert store.snapshots() == []


def test_no_candidates_in_an_empty_fold(store: CheckpointStore) -> None:
    assert store.candidates() == []


# --- quarantine -------------------------------------------------------------------------------------------------


def test_quarantine_moves_the_file_and_writes_the_reason(layout: RunLayout, store: CheckpointStore) -> None:
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"PK truncated")

    dst = store.quarantine(latest, "not a readable zip archive: truncated")

    assert not latest.exists()
    assert dst.parent == layout.quarantine_dir
    assert dst.read_bytes() == b"PK truncated"
    assert dst.name.startswith("checkpoint_latest.") and dst.suffix == ".pth"
    reason = dst.with_suffix(".reason.txt")
    assert reason.read_text().splitlines() == [str(latest), "not a readable zip archive: truncated"]
    assert store.candidates() == []  # out of nnU-Net's way


def test_two_quarantines_of_the_same_name_do_not_collide(layout: RunLayout, store: CheckpointStore,
                                                         fixed_clock: None) -> None:
    latest = layout.checkpoint("checkpoint_latest.pth")

    first = store.quarantine(write(latest, b"first"), "reason one")
    second = store.quarantine(write(latest, b"second"), "reason two")

    assert first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert "reason one" in first.with_suffix(".reason.txt").read_text()
    assert "reason two" in second.with_suffix(".reason.txt").read_text()
    assert len(list(layout.quarantine_dir.glob("*.pth"))) == 2
    assert len(list(layout.quarantine_dir.glob("*.reason.txt"))) == 2


def test_quarantine_of_a_snapshot(store: CheckpointStore, layout: RunLayout) -> None:
    snap = write(store.snapshot_dir / "checkpoint_latest.epoch000050.pth", b"snap")

    dst = store.quarantine(snap, "CRC mismatch")

    assert not snap.exists()
    assert dst.parent == layout.quarantine_dir
    assert dst.read_bytes() == b"snap"


# --- staging ----------------------------------------------------------------------------------------------------


def test_stage_as_latest_copies_and_sets_the_old_latest_aside(layout: RunLayout, store: CheckpointStore) -> None:
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"epoch 50")
    best = write(layout.checkpoint("checkpoint_best.pth"), b"epoch 73")

    staged = store.stage_as_latest(best)

    assert staged == latest
    assert latest.read_bytes() == b"epoch 73"
    assert best.read_bytes() == b"epoch 73"  # a copy: the source stays
    aside = list(store.replaced_dir.iterdir())
    assert len(aside) == 1
    assert aside[0].name.startswith("checkpoint_latest.")
    assert aside[0].read_bytes() == b"epoch 50"
    assert leftovers(layout.results) == []


def test_stage_as_latest_without_a_latest(layout: RunLayout, store: CheckpointStore) -> None:
    snap = write(store.snapshot_dir / "checkpoint_latest.epoch000050.pth", b"epoch 50")

    staged = store.stage_as_latest(snap)

    assert staged.read_bytes() == b"epoch 50"
    assert snap.read_bytes() == b"epoch 50"
    assert not store.replaced_dir.exists() or not any(store.replaced_dir.iterdir())
    assert leftovers(layout.results) == []


def test_stage_latest_onto_itself_keeps_it(layout: RunLayout, store: CheckpointStore) -> None:
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"epoch 50")

    store.stage_as_latest(latest)

    assert latest.read_bytes() == b"epoch 50"
    assert not store.replaced_dir.exists() or not any(store.replaced_dir.iterdir())


def test_two_set_asides_of_the_same_name_do_not_collide(layout: RunLayout, store: CheckpointStore,
                                                        fixed_clock: None) -> None:
    latest = layout.checkpoint("checkpoint_latest.pth")
    best = write(layout.checkpoint("checkpoint_best.pth"), b"best")
    write(latest, b"one")
    store.stage_as_latest(best)
    write(latest, b"two")
    store.stage_as_latest(best)

    assert sorted(p.read_bytes() for p in store.replaced_dir.iterdir()) == [b"one", b"two"]


# --- snapshots --------------------------------------------------------------------------------------------------


def test_snapshot_is_a_copy(layout: RunLayout, store: CheckpointStore) -> None:
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"epoch 50")

    snap = store.snapshot(latest, 50)

    assert snap is not None
    assert snap.parent == store.snapshot_dir
    assert snap.read_bytes() == b"epoch 50"
    assert snap.stat().st_ino != latest.stat().st_ino
    with open(latest, "r+b") as f:  # torch.save rewrites the same inode in place
        f.write(b"EPOCH 51")
    assert snap.read_bytes() == b"epoch 50"
    assert leftovers(layout.results) == []


def test_snapshot_keeps_only_the_newest(layout: RunLayout) -> None:
    store = CheckpointStore(layout, keep_snapshots=2)
    latest = layout.checkpoint("checkpoint_latest.pth")

    for epoch in (10, 20, 30):
        write(latest, f"epoch {epoch}".encode())
        store.snapshot(latest, epoch)

    assert [p.read_bytes() for p in store.snapshots()] == [b"epoch 20", b"epoch 30"]


def test_snapshot_default_keeps_one(layout: RunLayout, store: CheckpointStore) -> None:
    latest = layout.checkpoint("checkpoint_latest.pth")

    for epoch in (10, 20):
        write(latest, f"epoch {epoch}".encode())
        last = store.snapshot(latest, epoch)

    assert store.snapshots() == [last]


def test_snapshot_of_an_epoch_already_kept_is_not_rewritten(layout: RunLayout, store: CheckpointStore) -> None:
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"first")
    store.snapshot(latest, 50)
    write(latest, b"second")

    snap = store.snapshot(latest, 50)

    assert snap is not None
    assert snap.read_bytes() == b"first"


def test_keep_zero_makes_no_snapshot(layout: RunLayout) -> None:
    store = CheckpointStore(layout, keep_snapshots=0)
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"epoch 50")

    assert store.snapshot(latest, 50) is None
    assert not store.snapshot_dir.exists()
    assert store.snapshots() == []


def test_snapshot_just_made_survives_a_higher_epoch_leftover(layout: RunLayout, store: CheckpointStore) -> None:
    write(store.snapshot_dir / "checkpoint_latest.epoch000300.pth", b"before the warm start")
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"epoch 5 after the warm start")

    snap = store.snapshot(latest, 5)

    assert snap is not None
    assert snap.is_file()


# --- atomic_copy ------------------------------------------------------------------------------------------------


def test_atomic_copy_creates_and_replaces(tmp_path: Path) -> None:
    src = write(tmp_path / "src.pth", b"new")
    dst = tmp_path / "dst.pth"

    atomic_copy(src, dst)
    assert dst.read_bytes() == b"new"

    write(src, b"newer")
    atomic_copy(src, dst)
    assert dst.read_bytes() == b"newer"
    assert leftovers(tmp_path) == []


def test_atomic_copy_failure_leaves_dst_untouched_and_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path / "src.pth", b"new content")
    dst = write(tmp_path / "dst.pth", b"old content")

    def disk_full(a: Path, b: Path) -> None:
        Path(b).write_bytes(b"new co")  # half a copy, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.shutil, "copyfile", disk_full)

    with pytest.raises(OSError, match="No space left"):
        atomic_copy(src, dst)

    assert dst.read_bytes() == b"old content"
    assert src.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.pth", "src.pth"]


def test_stage_failure_keeps_a_latest_for_nnunet(layout: RunLayout, store: CheckpointStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed staging copy loses nothing: the old latest is aside and the source is untouched."""
    latest = write(layout.checkpoint("checkpoint_latest.pth"), b"epoch 50")
    best = write(layout.checkpoint("checkpoint_best.pth"), b"epoch 73")

    def disk_full(a: Path, b: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.shutil, "copyfile", disk_full)

    with pytest.raises(OSError):
        store.stage_as_latest(best)

    assert best.read_bytes() == b"epoch 73"
    assert [p.read_bytes() for p in store.replaced_dir.iterdir()] == [b"epoch 50"]
    assert not latest.exists() or latest.read_bytes() == b"epoch 50"
    assert leftovers(layout.results) == []

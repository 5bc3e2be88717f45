"""Checkpoint files of one run: candidates, quarantine, snapshots and staging. Nothing is ever deleted
except our own snapshots beyond the configured count."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from supervisor.atomic import atomic_copy, fsync_dir
from supervisor.layout import RunLayout

log = logging.getLogger(__name__)


class CheckpointStore:
    """Where a run's checkpoints are, and the moves the supervisor makes with them."""

    def __init__(self, layout: RunLayout, keep_snapshots: int = 1) -> None:
        self.layout = layout
        self.keep = keep_snapshots
        self.snapshot_dir = layout.supervisor_dir / "snapshots"
        self.replaced_dir = layout.supervisor_dir / "replaced"

    def snapshots(self) -> list[Path]:
        return sorted(self.snapshot_dir.glob("*.pth")) if self.snapshot_dir.is_dir() else []

    def candidates(self) -> list[Path]:
        """Fold checkpoints in --c order, then our snapshots."""
        return [*self.layout.existing_checkpoints(), *self.snapshots()]

    def _aside(self, path: Path, folder: Path, tag: str = "") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dst = folder / f"{path.stem}{tag}.{stamp}{path.suffix}"
        n = 1
        while dst.exists():
            dst = folder / f"{path.stem}{tag}.{stamp}-{n}{path.suffix}"
            n += 1
        os.replace(path, dst)  # same file system: a rename, never a copy that could fail half way
        fsync_dir(folder)
        fsync_dir(path.parent)
        return dst

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a damaged checkpoint out of nnU-Net's way, with its reason beside it."""
        dst = self._aside(path, self.layout.quarantine_dir)
        dst.with_suffix(".reason.txt").write_text(f"{path}\n{reason}\n")
        return dst

    def set_aside(self, path: Path) -> Path:
        """Keep a valid file that is about to be replaced (staging over an older latest, a warm start)."""
        return self._aside(path, self.replaced_dir)

    def stage_as_latest(self, src: Path) -> Path:
        """Make src what --c loads: copy it over checkpoint_latest.pth (keeping the old one aside)."""
        latest = self.layout.checkpoint("checkpoint_latest.pth")
        if latest.exists() and latest.resolve() != src.resolve():
            self.set_aside(latest)
        atomic_copy(src, latest)
        return latest

    def snapshot(self, latest: Path, epoch: int) -> Path | None:
        """Copy a verified checkpoint_latest.pth (a copy: torch.save rewrites the same inode in place)."""
        if self.keep <= 0:
            return None
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        dst = self.snapshot_dir / f"checkpoint_latest.epoch{epoch:06d}.pth"
        if not dst.exists():
            try:
                atomic_copy(latest, dst)
            except OSError as exc:  # a full disk: the snapshot is a spare, the run goes on without it
                log.warning("no snapshot of %s (%s)", latest.name, exc)
                return None
        # Our own copies: keep the newest `keep` by age (not by the epoch in the name: a warm start's leftovers may
        # carry higher epochs), and never the one just made.
        others = sorted((p for p in self.snapshots() if p != dst), key=lambda p: p.stat().st_mtime)
        for old in others[: max(0, len(others) - (self.keep - 1))]:
            old.unlink()
        return dst

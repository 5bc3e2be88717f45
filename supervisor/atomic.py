"""Atomic files: a reader, or a crash at any instant, sees the old file or the new one, never half of either.

The one way this package replaces a file (state.json, snapshots, staged and cooperative checkpoints): write a hidden
temporary beside the target, fsync it, `os.replace` it over the target, fsync the folder. Imported by the daemon and
by the trainer-side shim alike, so it depends on nothing else of ours.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename is durable only then); works on a file too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(target: Path) -> Path:
    """The hidden temporary for target: same folder (so the rename stays on one file system), our pid in its name."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def atomic_replace(target: Path, write: Callable[[Path], object], durable: bool = True) -> None:
    """Let write(tmp) produce the new content, then fsync and rename it over target; on any failure the temporary
    is removed and target is untouched. A write that produced no file (nothing to save) changes nothing.

    durable=False skips the fsyncs: still never half a file, but a power cut may bring back the previous one (for a
    heartbeat rewritten every second, whose loss costs nothing)."""
    tmp = temp_path(target)
    try:
        write(tmp)
        if not tmp.exists():
            return
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Replace path with text."""
    atomic_replace(path, lambda tmp: tmp.write_text(text), durable)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy src over dst so that dst is either the old file or a complete copy."""
    atomic_replace(dst, lambda tmp: shutil.copyfile(src, tmp))

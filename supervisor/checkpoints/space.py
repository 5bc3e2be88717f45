"""Free space for the next attempt, after one ran out of disk: how much it needs and how much there is."""

from __future__ import annotations

import shutil
from pathlib import Path

MARGIN_BYTES = 256 * 2**20  # logs, progress.png, validation outputs


def needed_bytes(fold_dir: Path, log_cap: int | None = None) -> int:
    """Room for two more of the largest checkpoint (the verified snapshot taken before the relaunch, and the
    temporary an atomic save writes beside the old file) and a margin for the logs, progress.png and validation
    outputs. The margin also holds the next attempt's log unless its cap is larger (the log keeper lets a log
    reach 1.5 x its cap); the whole cap is not added on top: a log grows by kilobytes an epoch, and waiting for
    room it may never use would keep a nearly full disk from training at all."""
    sizes = []
    for p in fold_dir.glob("checkpoint_*.pth"):
        try:
            sizes.append(p.stat().st_size if p.is_file() else 0)
        except OSError:
            continue
    return room_for(max(sizes, default=0), log_cap)


def room_for(checkpoint_bytes: int, log_cap: int | None) -> int:
    """The free space a launch needs, given the size of one checkpoint (see needed_bytes)."""
    return 2 * checkpoint_bytes + max(MARGIN_BYTES, 3 * log_cap // 2 if log_cap else 0)


def free_bytes(fold_dir: Path) -> int:
    """Free space for an unprivileged writer on the file system holding the fold folder."""
    folder = fold_dir
    while not folder.exists():  # not created yet: measure where it will be
        folder = folder.parent
    return shutil.disk_usage(folder).free


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"

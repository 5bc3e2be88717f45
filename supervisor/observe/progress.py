"""What a person reads in `systemctl status` (STATUS=): state, attempt, epoch/total, checkpoint age."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from supervisor.fileread import read_bytes
from supervisor.layout import CHECKPOINT_NAMES


def num_epochs(fold_dir: Path) -> int | None:
    """The trainer's own num_epochs: nnU-Net writes every trainer attribute to debug.json at the start."""
    try:
        return int(float(json.loads(read_bytes(fold_dir / "debug.json", 16 << 20, "debug.json"))["num_epochs"]))
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None


def checkpoint_age_s(fold_dir: Path, now: float) -> float | None:
    """Seconds since the newest checkpoint of the fold was written (wall clock)."""
    times = []
    for name in CHECKPOINT_NAMES:
        try:
            times.append((fold_dir / name).stat().st_mtime)
        except OSError:
            continue
    return max(0.0, now - max(times)) if times else None


def eta_s(epoch: int | None, total: int | None, epoch_times: list[float]) -> float | None:
    """Seconds to the last epoch at the median pace of the recent ones; None while unknown."""
    if epoch is None or not total or not epoch_times:
        return None
    return max(0, total - epoch) * statistics.median(epoch_times)


def duration(seconds: float) -> str:
    """Seconds for a person: "42 s", "17 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def status_line(state: str, attempt: int, epoch: int | None, total: int | None, ckpt_age_s: float | None) -> str:
    parts = [f"{state}: attempt {attempt}"]
    if epoch is not None:
        parts.append(f"epoch {epoch}/{total}" if total else f"epoch {epoch}")
    parts.append("no checkpoint yet" if ckpt_age_s is None else f"last checkpoint {duration(ckpt_age_s)} ago")
    return ", ".join(parts)

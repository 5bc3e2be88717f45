"""events.jsonl: one JSON object per line with ts (unix seconds), event and its fields."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class EventLog:
    """Append-only event record; each line is flushed and fsynced (events are rare, losing one is not ok)."""

    def __init__(self, path: Path, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.wall = wall

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"ts": round(self.wall(), 6), "event": event, **fields}
        line = json.dumps(entry, default=str) + "\n"
        with open(self.path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a power cut: do not glue this event onto it
                    line = "\n" + line
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        return entry


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed event in the file (a torn last line after a power cut is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry

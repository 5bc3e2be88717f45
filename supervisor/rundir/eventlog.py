"""events.jsonl: one JSON object per line with ts (unix seconds), event and its fields."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EventLog:
    """Append-only event record; each line is flushed and fsynced (events are rare, losing one is not ok)."""

    def __init__(self, path: Path, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.wall = wall
        self._unwritten: list[str] = []  # lines a full disk refused; written, in order, with the next event
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # told each event (metrics, notify)

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"ts": round(self.wall(), 6), "event": event, **fields}
        for listener in self.listeners:
            listener(event, fields)
        self._unwritten.append(json.dumps(entry, default=str) + "\n")
        try:
            self._append("".join(self._unwritten))
            self._unwritten.clear()
        except OSError as exc:  # ENOSPC, EDQUOT, EIO: supervising matters more than the record; keep it for later
            log.warning("could not write %s to %s (%s); kept in memory until it can be", event, self.path, exc)
        return entry

    def _append(self, text: str) -> None:
        with open(self.path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line (power cut, full disk): do not glue this event onto it
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())


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

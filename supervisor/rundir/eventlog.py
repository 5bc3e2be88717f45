"""events.jsonl: one JSON object per line with ts (unix seconds), event and its fields."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.fileread import read_bytes

log = logging.getLogger("nnunet_supervise")


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
        # O_NONBLOCK and a type check: a FIFO put in its place must not block the supervisor forever
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file")
        with open(fd, "a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line (power cut, full disk): do not glue this event onto it
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())


MAX_BYTES = 256 << 20  # events are rare (a few per attempt); a file this large is not ours
MAX_TS = 1e11  # unix seconds (the year 5138): a larger ts is garbage, and the clock functions would refuse it

# Fields readers rely on and what each must be; a mistyped one is dropped from its event (its reader's default
# applies). `ts` and `event` are required: an event without them is skipped.
FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "attempt": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an attempt number"),
    "returncode": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an exit status"),
    "pid": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "a pid"),
    "epoch": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an epoch"),
    "epochs_completed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an epoch count"),
    "delay_s": (lambda v: _number(v), "seconds"),
    "retryable": (lambda v: isinstance(v, bool), "true or false"),
    "resume": (lambda v: isinstance(v, bool), "true or false"),
    **{name: (lambda v: isinstance(v, str), "a string")
       for name in ("classification", "reason", "message", "summary", "kind", "path")},
}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class EventsReading:
    """The well-formed events, in order, and what was wrong with the rest."""

    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "line N: why"


def parse_events(raw: bytes) -> EventsReading:
    """events.jsonl's bytes, line by line (pure: the property tests drive it with any bytes)."""
    reading = EventsReading()
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            reading.problems.append(f"line {number}: not UTF-8")
            continue
        except ValueError:
            torn = number == len(lines)  # no newline after it: the last write was cut (power cut, full disk)
            reading.problems.append(f"line {number}: {'torn (no end)' if torn else 'not JSON'}")
            continue
        if not isinstance(entry, dict):
            reading.problems.append(f"line {number}: a JSON {type(entry).__name__}, not an object")
            continue
        ts = entry.get("ts")
        if not (isinstance(ts, (int, float)) and _number(ts) and 0 <= ts <= MAX_TS) \
                or not isinstance(entry.get("event"), str):
            reading.problems.append(f"line {number}: no valid ts and event")
            continue
        for key in [k for k in entry if k in FIELDS and not FIELDS[k][0](entry[k])]:
            reading.problems.append(f"line {number}: {key} is {json.dumps(entry[key])[:40]}, not {FIELDS[key][1]}")
            del entry[key]
        reading.events.append(entry)
    return reading


def read_events(path: Path, warn: bool = True) -> Iterator[dict[str, Any]]:
    """Every well-formed event in the file, in order; what is damaged is skipped and said once (one warning naming
    the file and the first few lines), never raised."""
    try:
        raw = read_bytes(path, MAX_BYTES, "events file")
    except FileNotFoundError:
        return
    except OSError as exc:
        if warn:
            log.warning("%s cannot be read (%s); no events from it", path, exc.strerror or exc)
        return
    reading = parse_events(raw)
    if warn and reading.problems:
        shown = "; ".join(reading.problems[:5]) + (f"; and {len(reading.problems) - 5} more"
                                                  if len(reading.problems) > 5 else "")
        log.warning("%s: %d damaged line(s) or field(s) skipped: %s", path, len(reading.problems), shown)
    yield from reading.events

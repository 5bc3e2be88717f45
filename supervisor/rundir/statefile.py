"""state.json: the run's current state, written atomically (tmp + fsync + rename + fsync of the folder).

`StateStore.load` is its only reader, and tolerant by construction: a file that is missing, not UTF-8, not JSON,
not an object or not a regular file reads as {}; a field of the wrong type is dropped (its reader's default
applies); each problem is said once, naming the file. The daemon sets a damaged file aside (never deletes it)
and rebuilds what it needs from events.jsonl and nnU-Net's own files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.atomic import atomic_write_text
from supervisor.fileread import read_bytes

log = logging.getLogger("nnunet_supervise")

MAX_BYTES = 1 << 20  # ours are a few KB; anything larger is not one of ours


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _int_or_none(v: object) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_or_none(v: object) -> bool:
    return v is None or isinstance(v, str)


def _dict_or_none(v: object) -> bool:
    return v is None or isinstance(v, dict)


def _numbers(v: object) -> bool:
    return isinstance(v, list) and all(_number(x) for x in v)


# What readers rely on, and what each field must be; anything else in the file is kept as it is.
FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "schema": (_count, "a count"),
    "state": (lambda v: isinstance(v, str), "a string"),
    "attempt": (_count, "a count"),
    "restarts": (_count, "a count"),
    "max_restarts": (_count, "a count"),
    "best_epoch": (_int_or_none, "an integer"),
    "epoch": (_int_or_none, "an integer"),
    "pid": (_int_or_none, "a pid"),
    "pid_create_time": (lambda v: v is None or _number(v), "a time"),
    "supervisor_pid": (_int_or_none, "a pid"),
    "last_exit": (_dict_or_none, "an object"),
    "remedies": (_dict_or_none, "an object"),
    "stop_reason": (_str_or_none, "a string"),
    "exit_code": (_int_or_none, "an exit code"),
    "resumable": (lambda v: isinstance(v, bool), "true or false"),
    "verified_epoch": (_int_or_none, "an integer"),
    "epoch_times": (_numbers, "a list of seconds"),
    "attempt_status": (_dict_or_none, "an object"),
    "warm_start_weights": (_str_or_none, "a path"),
    "next_launch_in_s": (lambda v: v is None or _number(v), "seconds"),
    "started_ts": (_number, "a time"),
    "updated_ts": (_number, "a time"),
    "num_epochs": (_int_or_none, "an integer"),
    "slurm_job_id": (_str_or_none, "a job id"),
    "main_loop_max_gap_s": (_number, "seconds"),
    "verified_ahead": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of objects"),
}


@dataclass
class Reading:
    """What was read: the usable fields, the fields dropped, or why nothing could be read."""

    data: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    damaged: str | None = None  # the file is there but unreadable as a whole: why


def parse(raw: bytes) -> Reading:
    """state.json's bytes, checked field by field (pure: the property tests drive it with any bytes)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Reading(damaged=f"not UTF-8 (byte {exc.start})")
    except ValueError as exc:
        return Reading(damaged=f"not JSON ({exc})")
    if not isinstance(doc, dict):
        return Reading(damaged=f"not a JSON object but {type(doc).__name__}")
    data, dropped = {}, []
    for key, value in doc.items():
        check = FIELDS.get(key)
        if check is not None and not check[0](value):
            dropped.append(f"{key} is {json.dumps(value)[:60]}, not {check[1]}")
            continue
        data[key] = value
    return Reading(data, dropped)


class StateStore:
    """Read and write one state.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: str | None = None
        self._failing: str | None = None

    def read(self) -> Reading:
        """The file as it is, never raising: missing reads as empty, not damaged."""
        try:
            raw = read_bytes(self.path, MAX_BYTES, "state.json")
        except FileNotFoundError:
            return Reading()
        except OSError as exc:  # a directory, a FIFO, unreadable: FileKindError says what it is
            return Reading(damaged=exc.strerror or str(exc))
        return parse(raw)

    def load(self) -> dict[str, Any]:
        """The last saved state ({} when there is none or it is unreadable); each problem is logged once."""
        reading = self.read()
        if reading.damaged:
            log.warning("%s is damaged (%s); read as empty", self.path, reading.damaged)
        for problem in reading.dropped:
            log.warning("%s: %s; ignored", self.path, problem)
        return reading.data

    def save(self, state: dict[str, Any]) -> None:
        """Write state plus `updated_ts`, unless nothing but the time changed since the last write."""
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        if text == self._written:
            return  # the supervisor saves on every tick; unchanged state costs no write, fsync or inotify event
        body = json.dumps({**state, "updated_ts": time.time()}, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write_text(self.path, body)
        except OSError as exc:  # a full disk must not kill the supervisor: the old state.json stays, retried later
            if self._failing is None:
                log.warning("could not write %s (%s); the previous one stays until it can be", self.path, exc)
            self._failing = str(exc)
            return
        self._written, self._failing = text, None

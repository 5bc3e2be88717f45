"""The daemon's start on a run directory that a power cut, a full disk or a person may have damaged.

Our own files are never deleted: one that is not a regular file (a directory, a FIFO, a socket where state.json
or events.jsonl should be) and a state.json that cannot be read as a whole are moved into `damaged/` with the
reason beside them; what the run needs from state.json is then rebuilt from events.jsonl and the attempt logs, so
that attempt numbers continue, checkpoints that existed are still known to have existed (never a silent fresh
start), and a pending warm start is still pending.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from supervisor.core.messages import Record
from supervisor.fileread import kind_of
from supervisor.layout import RunFiles
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore

log = logging.getLogger("nnunet_supervise")

ATTEMPT_LOG = re.compile(r"^attempt-(\d+)\.log(?:\.gz)?$")  # gzipped: an old one (rundir.logs)


def own_files(layout: RunFiles) -> list[Path]:
    return [layout.state_file, layout.events_file, layout.heartbeat_file, layout.lock_file,
            layout.supervisor_dir / "network-shapes.json", layout.supervisor_dir / "settings.json"]


def set_aside(path: Path, why: str) -> Path | None:
    """Move path into damaged/ beside it (a rename, never a delete), with a .reason.txt; where it went, or None."""
    folder = path.parent / "damaged"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dst = folder / f"{path.name}.{stamp}"
    n = 1
    while dst.exists() or dst.is_symlink():
        dst, n = folder / f"{path.name}.{stamp}-{n}", n + 1
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, dst)
        (folder / f"{dst.name}.reason.txt").write_text(f"{path}\n{why}\n")
    except OSError as exc:
        log.warning("could not move the damaged %s aside (%s)", path, exc)
        return None
    log.warning("%s %s; moved to %s", path, why, dst)
    return dst


def set_aside_wrong_kinds(layout: RunFiles) -> list[Record]:
    """Our files that are there but are not regular files, moved aside (before anything opens them)."""
    records = []
    for path in own_files(layout):
        kind = kind_of(path)
        if kind is None or kind == "missing":
            continue
        why = f"is {kind}, not a regular file"
        moved = set_aside(path, why)
        records.append(Record("damaged_file", {"path": str(path), "reason": why,
                                               "moved_to": None if moved is None else str(moved)}))
    return records


def rebuilt_from(events: list[dict[str, Any]], attempt_logs: list[int]) -> dict[str, Any]:
    """What state.json would say that matters for a resume, from the run's record (pure)."""
    out: dict[str, Any] = {"attempt": max([0, *attempt_logs, *(e.get("attempt", 0) for e in events
                                                                 if e["event"] == "launch")])}
    for e in events:
        if e["event"] == "checkpoint_verified" and isinstance(e.get("epoch"), int):
            out["verified_epoch"] = e["epoch"]
            out.pop("warm_start_weights", None)  # the warm-started training had checkpoints of its own by then
        elif e["event"] == "warm_start" and isinstance(e.get("weights"), str):
            out["warm_start_weights"] = e["weights"]
        elif e["event"] == "slurm" and isinstance(e.get("slurm_job_id"), str):
            out["slurm_job_id"], out["restarts"] = e["slurm_job_id"], 0
        elif e["event"] == "backoff" and "slurm_job_id" in out:
            out["restarts"] += 1
    return out


def previous_state(layout: RunFiles) -> tuple[dict[str, Any], list[Record]]:
    """The previous supervisor's state.json as far as it can be read, completed from events.jsonl and the attempt
    logs; the records say what was moved aside."""
    reading = StateStore(layout.state_file).read()
    records: list[Record] = []
    data = reading.data
    if reading.damaged is not None:
        moved = set_aside(layout.state_file, f"is damaged ({reading.damaged}); rebuilt from {layout.events_file.name}")
        records.append(Record("damaged_file", {"path": str(layout.state_file), "reason": reading.damaged,
                                               "moved_to": None if moved is None else str(moved)}))
    for problem in reading.dropped:
        log.warning("%s: %s; ignored", layout.state_file, problem)
    logs = [int(m.group(1)) for p in (layout.supervisor_dir.iterdir() if layout.supervisor_dir.is_dir() else [])
            if (m := ATTEMPT_LOG.match(p.name))]
    rebuilt = rebuilt_from(list(read_events(layout.events_file)), logs)
    for key, value in rebuilt.items():
        if data.get(key) is None:
            data[key] = value
    data["attempt"] = max(data.get("attempt", 0), rebuilt["attempt"])  # never reuse an attempt's log
    return data, records

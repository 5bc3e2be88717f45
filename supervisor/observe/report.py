"""`nnunet-supervise report`: what happened to a run, as numbers and as a timeline picture.

Read from the run's files only: nnU-Net's training logs (one per start; an epoch's start and its "Epoch time"),
events.jsonl (launches, exits and their classification) and, in cooperative mode, the shim's `start-up:` line in
each attempt log (where an attempt's start-up went: imports, the trainer, initialize, data and workers, the first
step). An epoch counts as *kept* when it is the last completion of that epoch index; earlier completions were
redone. Goodput = time spent in kept epochs / wall time.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from supervisor.core.classify import NOT_FAILURES
from supervisor.fileread import open_regular, read_bytes
from supervisor.layout import RunLayout
from supervisor.rundir.eventlog import read_events
from supervisor.trainer.cooperative import STARTUP_PREFIX

log = logging.getLogger("nnunet_supervise")
MAX_LOG_BYTES = 256 << 20  # nnU-Net writes ~1 KB per epoch
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): (.*?)\s*$", re.M)
STARTUP_HEAD_BYTES = 16 << 20  # the line comes at the first step; a capped attempt log keeps its head (logcap)
STARTUP_LINE = re.compile(rb"^" + re.escape(STARTUP_PREFIX.encode()) + rb" (.*) \(total (\d+(?:\.\d+)?) s\)\s*$",
                          re.M)
STARTUP_PART = re.compile(r"^(.+?) (\d+(?:\.\d+)?) s$")
ATTEMPT_LOG = re.compile(r"^attempt-(\d+)\.log(\.gz)?$")  # the older ones gzipped (rundir.logs)


@dataclass
class Epoch:
    index: int
    start: float  # unix seconds
    end: float | None = None  # None: never completed (the attempt died in it)
    attempt: int = 0
    kept: bool = False


@dataclass
class Timeline:
    epochs: list[Epoch] = field(default_factory=list)
    failures: list[tuple[float, int, str]] = field(default_factory=list)  # (ts, attempt, classification)
    launches: list[tuple[float, int]] = field(default_factory=list)  # (ts, attempt)
    causes: dict[int, str] = field(default_factory=dict)  # attempt -> the cause of its failure, where one was found
    remedies: list[dict[str, Any]] = field(default_factory=list)  # the `remedy` events
    startup: list[dict[str, Any]] = field(default_factory=list)  # per attempt: read_startup's split, where logged
    start: float = 0.0
    end: float = 0.0


def _unix(stamp: str) -> float:
    """nnU-Net stamps its log in local time (datetime.now())."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def read_log(path: Path) -> list[Epoch]:
    """The epochs of one nnU-Net training log; lines that do not parse (a damaged log) are passed over."""
    epochs: list[Epoch] = []
    try:
        text = read_bytes(path, MAX_LOG_BYTES, "training log").decode("utf-8", "replace")
    except OSError as exc:
        log.warning("%s cannot be read (%s); left out of the report", path, exc.strerror or exc)
        return epochs
    for stamp, line in LINE.findall(text):
        try:
            when = _unix(stamp)
        except (ValueError, OverflowError, OSError):
            continue
        if line.startswith("Epoch ") and line[6:].isdigit():
            epochs.append(Epoch(int(line[6:]), when))
        elif line.startswith("Epoch time:") and epochs and epochs[-1].end is None:
            epochs[-1].end = when
    return epochs


def parse_startup(text: bytes) -> dict[str, Any] | None:
    """The first `start-up:` line of an attempt's output as {"parts": {name: seconds, ...}, "total_s": seconds}
    (the parts in the order logged); None without one (not cooperative, or the attempt died before its first step)."""
    for m in STARTUP_LINE.finditer(text):
        parts: dict[str, float] = {}
        for chunk in m.group(1).decode("utf-8", "replace").split(", "):
            part = STARTUP_PART.match(chunk.strip())
            if part is None:
                break
            parts[part.group(1)] = float(part.group(2))
        else:
            return {"parts": parts, "total_s": float(m.group(2))}
    return None


def read_startup(path: Path) -> dict[str, Any] | None:
    """parse_startup of an attempt log's head (also a gzipped one); None when it has none or cannot be read."""
    try:
        with open_regular(path) as f:
            if path.name.endswith(".gz"):
                with gzip.GzipFile(fileobj=f) as z:
                    head = z.read(STARTUP_HEAD_BYTES)
            else:
                head = f.read(STARTUP_HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return None
    return parse_startup(head)


def startups(layout: RunLayout) -> list[dict[str, Any]]:
    """Each attempt's start-up split, attempt by attempt: {"attempt": N, "parts": {...}, "total_s": ...}."""
    logs: dict[int, Path] = {}
    try:
        for p in sorted(layout.supervisor_dir.iterdir(), key=lambda p: p.name.endswith(".gz"), reverse=True):
            if (m := ATTEMPT_LOG.match(p.name)) is not None:
                logs[int(m.group(1))] = p  # the plain one over a gzipped copy of it (being compressed)
    except OSError:
        return []
    out = []
    for attempt, path in sorted(logs.items()):
        found = read_startup(path)
        if found is not None:
            out.append({"attempt": attempt, **found})
    return out


def timeline(layout: RunLayout, now: float | None = None) -> Timeline:
    events = list(read_events(layout.events_file))
    t = Timeline()
    t.launches = [(e["ts"], int(e.get("attempt", 0))) for e in events if e["event"] == "launch"]
    t.failures = [(e["ts"], int(e.get("attempt", 0)), str(e.get("classification"))) for e in events
                  if e["event"] == "exit" and e.get("classification") not in NOT_FAILURES]
    t.causes = {int(e.get("attempt", 0)): str(e["cause"]) for e in events if e["event"] == "exit" and e.get("cause")}
    t.remedies = [{k: e.get(k) for k in ("attempt", "cause", "variable", "from", "to")}
                  for e in events if e["event"] == "remedy"]
    for path in sorted(layout.training_logs(), key=lambda p: p.stat().st_mtime):
        for ep in read_log(path):
            # the attempt whose launch came last before this epoch started
            ep.attempt = max((a for ts, a in t.launches if ts <= ep.start + 1), default=0)
            t.epochs.append(ep)
    last: dict[int, Epoch] = {}
    for ep in t.epochs:
        if ep.end is not None:
            last[ep.index] = ep  # later completions replace earlier ones
    for ep in last.values():
        ep.kept = True
    stamps = [ts for ts, _ in t.launches] + [e.start for e in t.epochs]
    ends = [e["ts"] for e in events] + [e.end for e in t.epochs if e.end is not None]
    if not stamps:  # never trained (a prediction-only run.yaml): no wall time, not the years since 1970
        t.start = t.end = 0.0
    else:
        t.start = min(stamps)
        t.end = max(ends, default=now or time.time())
    t.startup = startups(layout)
    return t


def summary(t: Timeline) -> dict[str, Any]:
    wall = max(t.end - t.start, 1e-9)
    kept = sum((e.end or e.start) - e.start for e in t.epochs if e.kept)
    completed = [e for e in t.epochs if e.end is not None]
    redone = [e for e in completed if not e.kept]
    return {
        "wall_s": round(wall, 1),
        "kept_training_s": round(kept, 1),
        "goodput": round(kept / wall, 4),
        "epochs_kept": sum(e.kept for e in t.epochs),
        "epochs_redone": len(redone),
        "epochs_interrupted": sum(e.end is None for e in t.epochs),
        "restarts": max(0, len(t.launches) - 1),
        "attempts": len(t.launches),
        "failures": [{"ts": ts, "attempt": a, "classification": c, **({"cause": t.causes[a]} if a in t.causes else {})}
                     for ts, a, c in t.failures],
        "remedies": t.remedies,
        "startup": t.startup,
    }


def plot(t: Timeline, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(t)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)

    def minutes(ts: float) -> float:
        return (ts - t.start) / 60

    attempts = sorted({e.attempt for e in t.epochs})
    colours = plt.get_cmap("tab10")
    for i, a in enumerate(attempts):
        mine = [e for e in t.epochs if e.attempt == a and e.end is not None]
        c = colours(i % 10)
        ax.plot([minutes(e.end or 0) for e in mine], [e.index + 1 for e in mine], "-", color=c, lw=1.2,
                label=f"attempt {a}")
        kept = [e for e in mine if e.kept]
        lost = [e for e in mine if not e.kept]
        ax.plot([minutes(e.end or 0) for e in kept], [e.index + 1 for e in kept], "o", color=c, ms=4)
        if lost:
            ax.plot([minutes(e.end or 0) for e in lost], [e.index + 1 for e in lost], "x", color=c, ms=6,
                    label=f"attempt {a}: redone later")
    # downtime: from a failure to the next epoch start
    for ts, _, label in t.failures:
        nxt = min((e.start for e in t.epochs if e.start > ts), default=t.end)
        ax.axvspan(minutes(ts), minutes(nxt), color="0.85", zorder=0)
        ax.axvline(minutes(ts), color="crimson", ls="--", lw=1)
        ax.annotate(label, (minutes(ts), ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8,
                    color="crimson")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("epochs completed")
    ax.set_title(f"goodput {s['goodput']:.0%}  ·  epochs redone: {s['epochs_redone']}  ·  restarts: {s['restarts']}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)

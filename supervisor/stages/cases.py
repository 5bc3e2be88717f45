"""What the stages whose unit of work is a case written share (preprocessing, prediction): the watch of one attempt
(the line it says it is on, the cases written, a stall learned from the gaps between them), the gaps carried over
from state.json, the disk check before a relaunch after a full disk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.checkpoints.space import free_bytes, human
from supervisor.core.messages import DiskChecked, Event, Record
from supervisor.core.rules import DiskWatch, alarm_event
from supervisor.core.stall import AttemptPhase, StallRules, StallWatch
from supervisor.stages.training.traininglog import read_tail

if TYPE_CHECKING:
    from supervisor.daemon.process import ProcessOps

log = logging.getLogger("nnunet_supervise")

SPACE_MARGIN = 1 << 30  # room for the cases in flight and the logs, before a relaunch after a full disk


class CaseWatch:
    """Progress of one attempt: the latest line it says what it is on with, and the cases written; a stall once the
    silence outlasts the learned gap between cases (or the allowance of the phase it is in). A stage says which
    lines count (`latest`) and which phase each puts it in (`phase_of`)."""

    working: AttemptPhase = "preprocessing"  # the phase of writing cases

    def __init__(self, log_path: Path, rules: StallRules, launched_at: float, gaps: list[float], written: int,
                 first_phase: AttemptPhase) -> None:
        self.log_path = log_path
        self.stall = StallWatch(rules, launched_at, list(gaps), phase=first_phase, unit="gap between cases")
        self.said: str | None = None  # the latest line that counts
        self.written = written  # cases written, as last seen
        self._last_case_at: float | None = None
        self.alarmed = False

    def latest(self, tail: str) -> str | None:
        raise NotImplementedError

    def phase_of(self, said: str) -> AttemptPhase:
        raise NotImplementedError

    def what(self, said: str) -> str:
        """The sign of life, in words (for the stall's "last sign of life")."""
        return said

    def poll(self, now: float, written: int) -> str | None:
        """Feed what is seen; why the attempt counts as stalled, once, or None."""
        said = self.latest(read_tail(self.log_path, 16 * 1024))
        if said is not None and said != self.said:
            self.said = said
            self.stall.progress(now, self.what(said), self.phase_of(said))
        if written > self.written:
            if self._last_case_at is not None:  # the first case of an attempt carries its start-up: not a pace
                self.stall.paced(now, (now - self._last_case_at) / (written - self.written),
                                 f"{written} case(s) written", self.working)
            else:
                self.stall.progress(now, f"{written} case(s) written", self.working)
            self._last_case_at = now
        self.written = written
        if self.alarmed:
            return None
        why = self.stall.stalled(now)
        self.alarmed = why is not None
        return why


    def deadline(self) -> float | None:
        """When the attempt would count as stalled (None once it was alarmed about)."""
        return None if self.alarmed else self.stall.deadline()

    def stall_event(self, why: str, ops: ProcessOps, marker: Path, dump: Path, **extra: Any) -> Event:
        """The `stall` the lifecycle hears, with the tree's kernel states (T stopped, D in I/O) and where the stack
        dump will be."""
        pids = ops.tree(str(marker))
        return alarm_event("stall", why, {"phase": self.stall.phase, "timeout_s": round(self.stall.timeout_s(), 1),
                                          "dump": str(dump), **extra,
                                          "process_states": {str(pid): ops.state(pid) for pid in pids}})


def carried_gaps(previous: dict[str, Any]) -> list[float]:
    """state.json's case_gaps (what is not a list of numbers is left out)."""
    gaps = previous.get("case_gaps")
    return [float(g) for g in gaps if isinstance(g, (int, float)) and not isinstance(g, bool)] \
        if isinstance(gaps, list) else []


def disk_check(folder: Path, log_cap: int | None, watch: DiskWatch) -> tuple[list[Record], DiskChecked]:
    """Free space where the stage writes, against what its next attempt needs."""
    free, needed = free_bytes(folder), SPACE_MARGIN + (log_cap or 0)
    records = watch.observe(free, needed, str(folder))
    for r in records:
        if r.event == "disk_full":
            log.warning("waiting for disk space before relaunching: %s free, %s needed in %s", human(free),
                        human(needed), folder)
    return records, DiskChecked(free, needed)

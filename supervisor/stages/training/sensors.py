"""What the supervisor sees, turned into events for the lifecycle and records for events.jsonl.

Sensors only read (nnU-Net's logs and checkpoints, the attempt log, the free space, the process
table); the rules that say what a reading means are pure (supervisor.core) and the runner acts on the result.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.checkpoints.meta import resume_point
from supervisor.checkpoints.space import free_bytes, human, needed_bytes
from supervisor.checkpoints.store import CheckpointStore
from supervisor.context import RunContext
from supervisor.core.causes import Evidence
from supervisor.core.messages import Begin, ChildExited, DiskChecked, Record
from supervisor.core.rules import DiskWatch, Every, alarm_event, attempt_phase, resume_check
from supervisor.core.stall import StallRules
from supervisor.evidence.collect import AttemptEvidence
from supervisor.observe.progress import num_epochs
from supervisor.stages.stage import Look
from supervisor.stages.training.attempt import AttemptWatch
from supervisor.stages.training.traininglog import read_tail

if TYPE_CHECKING:
    from supervisor.daemon.process import ProcessOps

log = logging.getLogger("nnunet_supervise")

EVIDENCE_SAMPLE_S = 2.0  # how often the tree's memory is sampled (a few /proc reads per process)
NO_CHECKPOINT_WARNING = "Cannot continue training because there seems to be no checkpoint"


class Sensors:
    """Facts about one fold, for the training stage: its begin, its running attempt, its end and the disk."""

    def __init__(self, ctx: RunContext, ops: ProcessOps, epoch_times: list[float]) -> None:
        self.ctx, self.layout, self.ops = ctx, ctx.layout, ops
        cfg = ctx.config
        hb = cfg.heartbeat
        self.rules = StallRules(startup_grace_s=hb.startup_grace_s, floor_s=hb.stall_floor_s,
                                validation_grace_s=hb.validation_grace_s,
                                stall_timeout_s=None if hb.stall_timeout_s == "auto" else float(hb.stall_timeout_s))
        self.disk_watch = DiskWatch()
        self.store = CheckpointStore(self.layout, cfg.checkpoint.snapshots)
        self.watch: AttemptWatch | None = None
        self.probes = ops.probes
        self.evidence: AttemptEvidence | None = None  # what the machine knows about the running attempt
        self.evidence_every = Every(EVIDENCE_SAMPLE_S)
        self.attempt = 0
        self.running = False  # the attempt's main process is alive (its end is being handled otherwise)
        self.epoch_now: int | None = None
        self._epoch_times = epoch_times  # recent epoch durations, across attempts and runs (state.json)
        self._expect_epoch: int | None = None
        self._resume_settled = True
        self._num_epochs: int | None = None
        self._resumed_from: str | None = None
        self.written: list[Path] = []  # checkpoints (re)written since the stage last took them

    def carry_epoch_times(self, times: object) -> None:
        """What the previous supervisor learned about this run's pace (state.json's epoch_times; what is not a
        list of numbers is left out)."""
        items = times if isinstance(times, list) else []
        self._epoch_times = [float(t) for t in items if isinstance(t, (int, float)) and not isinstance(t, bool)]

    # ---- the run ----

    def begin(self, had_checkpoints: bool) -> Begin:
        checkpoints = self.store.candidates()
        meta = resume_point(checkpoints)
        epoch = meta.current_epoch if meta and meta.current_epoch is not None else 0
        self.epoch_now = epoch
        return Begin(finished=self.layout.is_finished(), resume=bool(checkpoints) or had_checkpoints,
                     best_epoch=epoch)

    def launched(self, attempt: int, logs_before: set[Path], now: float, expect_epoch: int | None,
                 pid: int | None = None, validate: bool = False, resumed_from: str | None = None) -> None:
        """A trainer started: watch what it writes from now on (and, given its pid, its memory and the OOM killer).
        validate: a --val launch, in its final validation from the start; resumed_from: the verified checkpoint
        it loads."""
        hb = self.ctx.config.heartbeat
        self.evidence = AttemptEvidence.start(pid, self.probes) if pid is not None else None
        self._resumed_from = resumed_from
        self.attempt, self.running = attempt, True
        self._expect_epoch, self._resume_settled = expect_epoch, expect_epoch is None
        self.watch = AttemptWatch(self.layout, attempt, logs_before, self.rules, now, self._epoch_times,
                                  hb.linger_grace_s, hb.nan_loss_epochs,
                                  self.layout.heartbeat_file if self.ctx.config.cooperative.enabled else None,
                                  phase="validation" if validate else "startup")

    def main_exited(self) -> None:
        """The trainer's main process is gone (its tree is being stopped): no more alarms about it."""
        self.running = False

    def exited(self, returncode: int) -> ChildExited:
        """The trainer's tree is gone: what its end looked like."""
        self.running = False
        if self.watch is not None:
            self._epoch_times = self.watch.stall.epoch_times  # a relaunch starts with what this run learned
        meta = resume_point(self.layout.existing_checkpoints())
        epochs = max(self._attempt_epochs(), (meta.current_epoch or 0) if meta else 0)
        tail = read_tail(self.layout.attempt_log(self.attempt))
        phase = attempt_phase(self.watch.stall.phase if self.watch else "startup",
                              self.layout.checkpoint("checkpoint_final.pth").is_file())
        evidence = self.evidence.finish(phase, self.epoch_now) if self.evidence is not None else Evidence()
        evidence = replace(evidence, resumed_verified=self._resumed_from)
        self.evidence = None
        return ChildExited(returncode, tail, self.layout.is_finished(), epochs, evidence, phase)

    # ---- while it runs ----

    def look(self, now: float) -> Look:
        """Poll the running attempt's files."""
        look = Look()
        watch = self.watch
        if watch is None or not self.running:
            return look
        if self.evidence is not None and self.evidence_every.due(now):
            self.evidence.sample()  # the tree's memory, and its pids for the kernel log's "Killed process" lines
        before = self.epoch_now
        self._attempt_epochs()
        look.changed = self.epoch_now != before
        if not self._resume_settled:
            self._check_resumed(look)
        alarm = watch.poll(now)
        self.written, watch.written = [*self.written, *watch.written], []  # verify them ahead
        if alarm is not None:
            fields = self._stall_facts(watch) if alarm.kind == "stall" else {}
            look.events.append(alarm_event(alarm.kind, alarm.message, fields))
        return look

    def stall_deadline(self) -> float | None:
        """When the running attempt would count as stalled (None: nothing to wait for)."""
        watch = self.watch
        if watch is None or not self.running or watch.alarmed:
            return None
        return watch.stall.deadline()

    def _check_resumed(self, look: Look) -> None:
        saw = NO_CHECKPOINT_WARNING in read_tail(self.layout.attempt_log(self.attempt), 256 * 1024)
        followers = self.watch.followers.values() if self.watch else []
        firsts = [f.progress.first_epoch for f in followers if f.progress.first_epoch is not None]
        self._resume_settled, abort = resume_check(self.attempt, self._expect_epoch, saw, firsts)
        if abort is not None:
            look.events.append(abort)

    def _attempt_epochs(self) -> int:
        progress = self.watch.logs() if self.watch else []
        completed = max((p.epochs_completed for p in progress), default=0)
        current = [p.current_epoch for p in progress if p.current_epoch is not None]
        if current:
            self.epoch_now = max(current)
        return completed

    def _stall_facts(self, watch: AttemptWatch) -> dict[str, Any]:
        """Cheap facts for the `stall` event: the tree's kernel states (T stopped, D in I/O) and where the stack
        dump (DumpStacks, right after the event) will be."""
        pids = self.ops.tree(str(self.layout.fold_dir))
        return {"phase": watch.stall.phase, "timeout_s": round(watch.stall.timeout_s(), 1),
                "dump": str(self.stall_dump_path()), "process_states": {str(pid): self.ops.state(pid) for pid in pids}}

    def stall_dump_path(self) -> Path:
        return self.layout.supervisor_dir / f"stall-{self.attempt}.txt"

    # ---- the disk, after an attempt ran out of it ----

    def disk(self) -> tuple[list[Record], DiskChecked]:
        fold = self.layout.fold_dir
        free, needed = free_bytes(fold), needed_bytes(fold, self.ctx.config.process.attempt_log_max_bytes)
        records = self.disk_watch.observe(free, needed, str(fold))
        for r in records:
            if r.event == "disk_full":
                log.warning("waiting for disk space before relaunching: %s free, %s needed in %s", human(free),
                            human(needed), fold)
            else:
                log.info("disk space is back (%s free); relaunching", human(free))
        return records, DiskChecked(free, needed)

    # ---- for state.json and the status line ----

    def recent_epoch_times(self) -> list[float]:
        """This run's recent epoch durations: the running attempt's watch, else what state.json carried."""
        return self.watch.stall.epoch_times if self.watch else self._epoch_times

    def attempt_status(self, now: float) -> dict[str, object] | None:
        return self.watch.status(now) if self.watch is not None and self.running else None

    def total_epochs(self) -> int | None:
        """The trainer's num_epochs, once it wrote debug.json (read once per run: it does not change)."""
        if self._num_epochs is None and self.running:
            self._num_epochs = num_epochs(self.layout.fold_dir)
        return self._num_epochs

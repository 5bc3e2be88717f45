"""The thin runner: gathers facts, feeds events to the Decider, carries out its actions.

Threads and signal handlers only enqueue (a SimpleQueue, whose put is safe inside a signal handler);
the main thread alone drains the queue, decides and acts.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Union

from supervisor import slurm
from supervisor.attempt import AttemptWatch
from supervisor.checkpoint import resume_point
from supervisor.ckptstore import CheckpointStore, atomic_copy
from supervisor.command import build_argv, build_env, trainer_command
from supervisor.context import RunContext
from supervisor.diskspace import free_bytes, human, needed_bytes
from supervisor.errors import LaunchError
from supervisor.events import EventLog
from supervisor.gpu import GpuFault, GpuHealth, GpuMonitor, create_monitor, wait_memory_released
from supervisor.heartbeat import FileActivity, StallRules, dump_stacks, process_state
from supervisor.lock import RunLock
from supervisor.loop import (
    Abort,
    Action,
    Begin,
    CheckDisk,
    ChildExited,
    Decider,
    DiskChecked,
    DumpStacks,
    Event,
    Exit,
    Kill,
    Launch,
    Launched,
    LaunchFailed,
    LoopState,
    Phase,
    Prepare,
    Record,
    Recycle,
    RequestSave,
    Say,
    StopRequested,
    Terminate,
    Tick,
)
from supervisor.policy import RestartPolicy
from supervisor.power import BatteryReading, BatteryWatch, read_battery
from supervisor.process import TrainerProcess, become_subreaper, marked_processes, stop_tree
from supervisor.resume import ResumePlan, plan_resume, warm_start_blockers
from supervisor.sdnotify import Notifier
from supervisor.service import checkpoint_age_s, num_epochs, status_line
from supervisor.state import StateStore
from supervisor.traininglog import read_tail
from supervisor.verify import ProbeError, Verdict, expectations, network_request, structure_verdict, verify_all

if TYPE_CHECKING:
    from supervisor.metrics import Metrics
    from supervisor.notify import Notifications

log = logging.getLogger("nnunet_supervise")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
NO_CHECKPOINT_WARNING = "Cannot continue training because there seems to be no checkpoint"


@dataclass(frozen=True)
class _ChildGone:
    """From the waiter thread: the trainer's main process exited."""

    proc: TrainerProcess
    returncode: int


@dataclass(frozen=True)
class _Wake:
    """From the file observer: something changed in the fold folder; look now rather than at the next tick."""


@dataclass(frozen=True)
class _GpuReport:
    """From the GPU monitor's thread: a GpuFault or a changed GpuHealth."""

    report: GpuFault | GpuHealth


Spawner = Callable[[list[str], dict[str, str], Path, Path], TrainerProcess]


class Runner:
    """Supervise one run until it finishes, gives up or is stopped; returns the exit code."""

    def __init__(self, ctx: RunContext, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 spawn: Spawner = TrainerProcess.spawn, tick_s: float = 2.0, leftover_grace_s: float = 10.0,
                 battery: Callable[[], BatteryReading | None] = read_battery,
                 notifier: Notifier | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.ctx = ctx
        self.on_status = on_status  # e.g. the live line on a terminal
        self.notifier = notifier or Notifier()  # systemd Type=notify; a no-op elsewhere
        self.layout = ctx.layout
        self.clock = clock
        self.wall = wall
        self.spawn = spawn
        self.tick_s = tick_s
        self.leftover_grace_s = leftover_grace_s
        cfg = ctx.config
        self.decider = Decider(RestartPolicy.from_config(cfg.restart), cfg.process.stop_grace_s, rand,
                               disk_check_s=cfg.restart.disk_check_s)
        self.events = EventLog(self.layout.events_file, wall)
        self.store = StateStore(self.layout.state_file)
        self.queue: queue.SimpleQueue[Union[Event, _ChildGone, _Wake, _GpuReport]] = queue.SimpleQueue()
        self.gpu: GpuMonitor | None = None
        self._old_tree: set[int] = set()  # the last attempt's pids, whose GPU memory must be freed first
        self.proc: TrainerProcess | None = None
        self.ckpts = CheckpointStore(self.layout, cfg.checkpoint.snapshots)
        self._prepared: tuple[threading.Thread, list[Any]] | None = None
        self._had_checkpoints = False
        self._verified_epoch: int | None = None  # newest checkpoint epoch ever resumed from (kept in state.json)
        self._warm_weights: str | None = None  # a warm start's weights, until its training writes a checkpoint
        self._expect_epoch: int | None = None  # the epoch the running attempt must resume at
        self._resume_confirmed = True
        self._watch: AttemptWatch | None = None
        self._battery, self._power = battery, BatteryWatch(cfg.power.battery_stop_percent)
        self._power_checked: float | None = None
        self._verdict_sent = False
        self._disk_said = False  # a disk_full event was recorded and space has not come back yet
        self._wake_pending = threading.Event()
        self._num_epochs: int | None = None
        self._slurm_job: str | None = None
        self.metrics: Metrics | None = None
        m = cfg.metrics
        if m.port is not None or m.textfile is not None:
            from supervisor.metrics import Metrics  # prometheus_client only when metrics are asked for

            self.metrics = Metrics(str(self.layout.fold_dir), m.port, m.host,
                                   None if m.textfile is None else Path(m.textfile), clock)
            self.events.listeners.append(self.metrics.count)
        self.notifications: Notifications | None = None
        if cfg.notify.urls:
            from supervisor.notify import Notifications

            self.notifications = Notifications(str(self.layout.fold_dir), list(cfg.notify.urls),
                                               list(cfg.notify.on), cfg.notify.repeated_failures)
            self.events.listeners.append(self.notifications.on_event)
        self._epoch_times: list[float] = []  # recent epoch durations, across attempts and runs (state.json)
        hb = cfg.heartbeat
        self._stall_rules = StallRules(
            startup_grace_s=hb.startup_grace_s, floor_s=hb.stall_floor_s, validation_grace_s=hb.validation_grace_s,
            stall_timeout_s=None if hb.stall_timeout_s == "auto" else float(hb.stall_timeout_s))
        self._epoch_now: int | None = None
        self._attempt = 0
        self._last_state = LoopState()
        self._started_ts = wall()

    # ---- the loop ----

    def run(self) -> int:
        self.layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.layout.lock_file)
        lock.acquire()  # LockedError -> exit 3, before anything is touched
        log.info("supervising %s (run directory %s)", self.ctx.config_path, self.layout.supervisor_dir)
        own = str(self.layout.supervisor_dir)
        # Our own state.json/events.jsonl writes must not wake us; the trainer's attempt log should.
        files = FileActivity([self.layout.fold_dir], self._file_changed, min_interval_s=0.0,
                             ignore=lambda path: path.startswith(own) and not path.endswith(".log"))
        try:
            become_subreaper()
            previous = self.store.load()
            self._verified_epoch = previous.get("verified_epoch")
            self._had_checkpoints = self._verified_epoch is not None
            self._warm_weights = previous.get("warm_start_weights")
            self._epoch_times = [float(t) for t in previous.get("epoch_times") or []]
            self._stop_orphans(previous)
            files.start()
            self._start_gpu_monitor()
            with self._signals():
                self.notifier.ready(f"supervising {self.ctx.config_path}")
                code = self._loop(self._initial_state(previous))
                self.notifier.stopping(f"{self._last_state.phase.value}: exit {code}")
                self._maybe_requeue(code)
                return code
        finally:
            if self.metrics is not None:
                self.metrics.close()
            if self.notifications is not None:
                self.notifications.close()
            files.stop()
            if self.gpu is not None:
                self.gpu.stop()
            self._ensure_stopped()
            lock.release()

    def _initial_state(self, previous: dict[str, Any]) -> LoopState:
        """Attempts always continue; inside a SLURM job the restarts do too, across its requeues."""
        state = LoopState(attempt=int(previous.get("attempt", 0)))
        facts = slurm.job_facts(os.environ)
        if facts:
            self._slurm_job = facts["slurm_job_id"]
            self.events.record("slurm", **facts)
            log.info("inside SLURM job %s (restart count %s)", self._slurm_job, facts.get("slurm_restart_count", "0"))
            if previous.get("slurm_job_id") == self._slurm_job:
                state = replace(state, restarts=int(previous.get("restarts", 0)))
        return state

    def _maybe_requeue(self, code: int) -> None:
        """Preempted inside a SLURM job: ask SLURM to run the job again (it resumes from the checkpoint)."""
        if not slurm.should_requeue(self._last_state.stop_reason, code, os.environ):
            return
        ok, said = slurm.requeue(os.environ)
        self.events.record("requeue", job=self._slurm_job, ok=ok, output=said)
        if ok:
            log.info("requeued SLURM job %s: the next incarnation resumes from the checkpoint", self._slurm_job)
        else:
            log.error("scontrol requeue %s failed: %s", self._slurm_job, said)

    def _loop(self, state: LoopState) -> int:
        pending: deque[Event] = deque([self._begin()])
        while True:
            if not pending:
                pending.append(self._next_event(state))
            state, actions = self.decider.step(state, pending.popleft(), self.clock())
            self._persist(state)
            self.notifier.watchdog(self.clock())  # from the loop itself: a hung loop stops pinging
            for action in actions:
                if isinstance(action, Exit):
                    return action.code
                follow_up = self._perform(action)
                if follow_up is not None:
                    pending.append(follow_up)

    def _next_event(self, state: LoopState) -> Event:
        timeout = self.tick_s
        if self.notifier.watchdog_s is not None:
            timeout = min(timeout, self.notifier.watchdog_s / 4)  # pings due at half the interval stay on time
        if state.deadline is not None:
            timeout = max(0.0, min(timeout, state.deadline - self.clock()))
        if self._watch is not None and not self._verdict_sent:
            # wake right at the stall deadline, not up to a tick after it
            timeout = max(0.0, min(timeout, self._watch.stall.deadline() - self.clock() + 0.01))
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            self._watch_progress()
            return Tick()
        if isinstance(item, _ChildGone):
            return self._child_exited(item)
        if isinstance(item, _Wake):
            self._wake_pending.clear()  # before reading: a change from now on queues a fresh wake
            self._watch_progress()
            return Tick()
        if isinstance(item, _GpuReport):
            return self._gpu_report(item.report)
        if isinstance(item, StopRequested) and self.ctx.config.cooperative.enabled and self.proc is not None:
            return replace(item, save_timeout_s=self._save_timeout_s())
        return item

    def _file_changed(self) -> None:
        """From the watchdog thread: one wake in the queue at a time, never a change left unread (a dropped
        wake would delay seeing an epoch line to the next tick, and so inflate the stall clock)."""
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self.queue.put(_Wake())

    def _save_timeout_s(self) -> float:
        """How long a cooperative trainer may take to reach its epoch end and save: the rest of an epoch."""
        configured = self.ctx.config.cooperative.stop_timeout_s
        if configured != "auto":
            return float(configured)
        times = self._recent_epoch_times()
        return 2 * max(times) + 60 if times else 600.0

    def _check_disk(self) -> DiskChecked:
        free, needed = free_bytes(self.layout.fold_dir), needed_bytes(self.layout.fold_dir)
        if free < needed and not self._disk_said:
            self._disk_said = True
            self.events.record("disk_full", free_bytes=free, needed_bytes=needed, path=str(self.layout.fold_dir))
            log.warning("waiting for disk space before relaunching: %s free, %s needed in %s", human(free),
                        human(needed), self.layout.fold_dir)
        elif free >= needed and self._disk_said:
            self._disk_said = False
            self.events.record("disk_space", free_bytes=free, needed_bytes=needed)
            log.info("disk space is back (%s free); relaunching", human(free))
        return DiskChecked(free, needed)

    def _gpu_report(self, report: GpuFault | GpuHealth) -> Event:
        """A hardware-class fault ends the run (exit 1: relaunching on a broken GPU repeats the failure; under
        SLURM the job can go elsewhere); anything else is recorded and the trainer's own exit decides."""
        if isinstance(report, GpuFault):
            fields = {"gpu": report.gpu, "xid": report.xid, "kind": report.kind, "hardware": report.hardware,
                      "message": report.message}
            self.events.record("gpu_fault", **fields)
            log.warning("GPU %s: %s", report.gpu, report.message)
        else:
            self.events.record("gpu_health", gpu=report.gpu, problems=report.problems, hardware=report.hardware)
            log.warning("GPU %s health: %s", report.gpu, "; ".join(report.problems) or "recovered")
            if report.hardware:
                self.events.record("gpu_fault", gpu=report.gpu, xid=None, kind="health", hardware=True,
                                   message="; ".join(report.problems))
        if report.hardware:
            what = report.message if isinstance(report, GpuFault) else "; ".join(report.problems)
            return Abort("gpu_fault", f"GPU {report.gpu} has a hardware-class fault ({what}): not relaunching on "
                                      "it; have the GPU checked (nvidia-smi -q), or run elsewhere")
        return Tick()

    # ---- facts ----

    def _begin(self) -> Begin:
        finished = self.layout.is_finished()
        checkpoints = self.ckpts.candidates()
        meta = resume_point(checkpoints)
        epoch = meta.current_epoch if meta and meta.current_epoch is not None else 0
        self._epoch_now = epoch
        return Begin(finished=finished, resume=bool(checkpoints) or self._had_checkpoints, best_epoch=epoch)

    def _attempt_epochs(self) -> int:
        progress = self._watch.logs() if self._watch else []
        completed = max((p.epochs_completed for p in progress), default=0)
        current = [p.current_epoch for p in progress if p.current_epoch is not None]
        if current:
            self._epoch_now = max(current)
        return completed

    def _start_gpu_monitor(self) -> None:
        nn = self.ctx.config.nnunet
        visible = nn.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        if visible is None and nn.num_gpus == 1:
            visible = "0"  # nnU-Net trains on cuda:0 alone; other GPUs' faults are not this run's
        self.gpu, line = create_monitor(nn.device, visible, self._put_gpu_report)
        log.info("%s", line)
        if self.gpu is not None:
            self.gpu.start()

    def _put_gpu_report(self, report: object) -> None:
        if isinstance(report, (GpuFault, GpuHealth)):
            self.queue.put(_GpuReport(report))

    def _wait_gpu_memory(self) -> None:
        """Before a relaunch: the old tree's CUDA memory must be free, or the new trainer may OOM at once."""
        if self.gpu is None or not self._old_tree:
            return
        held = wait_memory_released(self.gpu.nvml, self.gpu.gpus, self._old_tree, timeout_s=60)
        if held:
            log.warning("pids %s still hold GPU memory after 60 s; launching anyway", held)
        self._old_tree = set()

    def _check_power(self) -> None:
        """Every power.check_every_s: on battery -> a `power` record; at the threshold, stop resumably."""
        now = self.clock()
        if self._power_checked is not None and now - self._power_checked < self.ctx.config.power.check_every_s:
            return
        self._power_checked = now
        for notice in self._power.observe(self._battery()):
            self.events.record("power", kind=notice.kind, percent=notice.percent, message=notice.message)
            log.warning("%s", notice.message)
            if notice.stop:
                self.queue.put(StopRequested(notice.message))

    def _watch_progress(self) -> None:
        self._check_power()
        if self.proc is None:
            return
        before = self._epoch_now
        self._attempt_epochs()
        if self._epoch_now != before:
            self._persist_extra()
        if not self._resume_confirmed:
            self._check_resumed_where_expected()
        watch = self._watch
        if watch is None or self._verdict_sent:
            return
        verdict = watch.poll(self.clock())
        if verdict is None:
            return
        self._verdict_sent = True  # one verdict per attempt; the decider is already stopping it
        if verdict.kind == "diverged":
            self.queue.put(Abort("diverged", verdict.message))
        elif verdict.kind == "stall":
            self.queue.put(Recycle("stall", verdict.message, self._stall_facts(watch)))
        else:
            self.queue.put(Recycle(verdict.kind, verdict.message))

    def _stall_facts(self, watch: AttemptWatch) -> dict[str, Any]:
        """Cheap facts for the `stall` event: the tree's kernel states (T stopped, D in I/O) and where the
        stack dump (DumpStacks, right after the event) will be."""
        pids = [p.pid for p in marked_processes(str(self.layout.fold_dir))]
        return {"phase": watch.stall.phase, "timeout_s": round(watch.stall.timeout_s(), 1),
                "dump": str(self._stall_dump_path()),
                "process_states": {str(pid): process_state(pid) for pid in pids}}

    def _stall_dump_path(self) -> Path:
        return self.layout.supervisor_dir / f"stall-{self._attempt}.txt"

    def _dump_stacks(self) -> None:
        pids = [p.pid for p in marked_processes(str(self.layout.fold_dir))]
        said = dump_stacks(pids, self._stall_dump_path())
        log.warning("attempt %d stalled: %s", self._attempt, said)
        self.events.record("stack_dump", attempt=self._attempt, path=str(self._stall_dump_path()), note=said)

    def _check_resumed_where_expected(self) -> None:
        """Catch a --c that silently started over, or resumed below the checkpoint we verified."""
        expect = self._expect_epoch or 0
        if NO_CHECKPOINT_WARNING in read_tail(self.layout.attempt_log(self._attempt), 256 * 1024):
            self._resume_confirmed = True
            self.queue.put(Abort("fresh_start_detected", f"attempt {self._attempt} was launched with --c to resume "
                                 f"epoch {expect}, but nnU-Net found no checkpoint and started from scratch"))
            return
        followers = self._watch.followers.values() if self._watch else []
        firsts = [f.progress.first_epoch for f in followers if f.progress.first_epoch is not None]
        if not firsts:
            return
        self._resume_confirmed = True
        if min(firsts) < expect:
            self.queue.put(Abort("epoch_regression", f"attempt {self._attempt} resumed at epoch {min(firsts)}, below "
                                 f"the verified checkpoint's epoch {expect}"))

    def _child_exited(self, gone: _ChildGone) -> ChildExited:
        stopped = gone.proc.stop_leftovers(self.leftover_grace_s)
        self._old_tree = {gone.proc.pid, *stopped}
        if stopped:
            log.info("stopped %d leftover process(es) of the trainer's tree: %s", len(stopped), stopped)
        self.proc = None
        if self._watch is not None:
            self._epoch_times = self._watch.stall.epoch_times  # a relaunch starts with what this run learned
        meta = resume_point(self.layout.existing_checkpoints())
        epochs = max(self._attempt_epochs(), (meta.current_epoch or 0) if meta else 0)
        tail = read_tail(self.layout.attempt_log(self._attempt))
        return ChildExited(gone.returncode, tail, self.layout.is_finished(), epochs)

    # ---- actions ----

    def _perform(self, action: Action) -> Event | None:
        if isinstance(action, Launch):
            return self._launch(action)
        if isinstance(action, Prepare):
            self._start_prepare()
        if isinstance(action, Terminate):
            if self.proc is not None:
                self.proc.terminate()
        elif isinstance(action, DumpStacks):
            self._dump_stacks()
        elif isinstance(action, RequestSave):
            if self.proc is not None:
                self.proc.request_save()
        elif isinstance(action, CheckDisk):
            return self._check_disk()
        elif isinstance(action, Kill):
            if self.proc is not None:
                self.proc.kill()
        elif isinstance(action, Record):
            self.events.record(action.event, **action.fields)
        elif isinstance(action, Say):
            log.info("%s", action.message)
        return None

    def _launch(self, action: Launch) -> Event:
        self._attempt = action.attempt
        logs_before = set(self.layout.training_logs())
        self._watch, self._verdict_sent = None, False
        log_path = self.layout.attempt_log(action.attempt)
        resume, pretrained = False, None
        self._expect_epoch, self._resume_confirmed = None, True
        if action.resume or self.ckpts.candidates():
            verdicts, plan = self._take_prepared()
            outcome = self._carry_out(plan, verdicts)
            if isinstance(outcome, LaunchFailed):
                return outcome
            # every relaunch uses --c (on an emptied folder nnU-Net then starts over, which the plan allowed)
            resume, pretrained = action.resume and plan.action != "warm_start", outcome
        try:
            argv = build_argv(self.ctx, trainer_command(self.ctx), resume, pretrained)
            env = build_env(self.ctx, action.attempt)
            with open(log_path, "a") as f:
                f.write(f"# nnunet-supervise attempt {action.attempt}: {' '.join(argv)}\n")
            self._wait_gpu_memory()
            proc = self.spawn(argv, env, log_path, self.layout.fold_dir)
        except (OSError, LaunchError) as exc:
            return LaunchFailed(str(exc))
        self.proc = proc
        hb = self.ctx.config.heartbeat
        self._watch = AttemptWatch(self.layout, action.attempt, logs_before, self._stall_rules, self.clock(),
                                   self._epoch_times, hb.linger_grace_s, hb.nan_loss_epochs,
                                   self.layout.heartbeat_file if self.ctx.config.cooperative.enabled else None)
        threading.Thread(target=lambda: self.queue.put(_ChildGone(proc, proc.wait())),
                         name=f"wait-attempt-{action.attempt}", daemon=True).start()
        return Launched(proc.pid, tuple(argv), resume)

    # ---- checkpoints before a launch ----

    def _start_prepare(self) -> None:
        """Verify in the background while the backoff runs; _take_prepared() collects the result."""
        box: list[Any] = []
        thread = threading.Thread(target=lambda: box.append(self._plan_now()), name="verify", daemon=True)
        thread.start()
        self._prepared = (thread, box)

    def _take_prepared(self) -> tuple[list[Verdict], ResumePlan]:
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return self._plan_now()
        thread, box = prepared
        thread.join()
        result: tuple[list[Verdict], ResumePlan] = box[0]
        return result

    def _plan_now(self) -> tuple[list[Verdict], ResumePlan]:
        cfg = self.ctx.config.checkpoint
        candidates = self.ckpts.candidates()
        warm = [Path(self._warm_weights)] if self._warm_weights and Path(self._warm_weights).is_file() else []
        try:
            network = network_request(self.ctx, cache=self.layout.supervisor_dir / "network-shapes.json")
            verdicts, net_error = verify_all([*candidates, *warm], expectations(self.ctx), network,
                                             build_env(self.ctx, attempt=0))
        except ProbeError as exc:
            # Our own verifier failed, not the checkpoints: fall back to the structural check alone.
            log.warning("content/compatibility check could not run (%s); using the structural check only", exc)
            verdicts, net_error = [structure_verdict(p) for p in [*candidates, *warm]], None
        if net_error:
            log.warning("could not build the trainer's network to check compatibility: %s", net_error)
        warm_from = verdicts[len(candidates)] if warm else None
        verdicts = verdicts[:len(candidates)]
        plan = plan_resume(verdicts, self.layout.fold_dir, had_checkpoints=self._had_checkpoints,
                           allow_fresh_start=cfg.allow_fresh_start, on_incompatible=cfg.on_incompatible,
                           warm_from=warm_from)
        return verdicts, plan

    def _carry_out(self, plan: ResumePlan, verdicts: list[Verdict]) -> LaunchFailed | str | None:
        """Quarantine, stage, snapshot; returns LaunchFailed, a -pretrained_weights path, or None."""
        for v in plan.quarantine:
            dst = self.ckpts.quarantine(Path(v.path), v.reason())
            log.warning("checkpoint %s is damaged (%s); moved to %s", v.path, v.reason(), dst)
            self.events.record("checkpoint_corrupt", path=v.path, reason=v.reason(), quarantined_to=str(dst))
        if verdicts:
            self._had_checkpoints = True
        if plan.action == "give_up":
            event = None
            bad = plan.source
            if plan.kind == "incompatible_checkpoint" and bad is not None:
                event = Record("incompatible_checkpoint", {
                    "path": bad.path, "epoch": bad.epoch, "missing_keys": bad.missing_keys,
                    "unexpected_keys": bad.unexpected_keys, "shape_mismatches": bad.shape_mismatches,
                    "hints": bad.hints})
                log.error("%s", incompatibility_report(bad))
            return LaunchFailed(plan.message, plan.kind, event)
        if plan.action == "fresh":
            if plan.message:
                log.warning("%s", plan.message)
                self.events.record("fresh_start", reason=plan.message)
            return None
        src = plan.source
        assert src is not None
        if plan.action == "warm_start":
            return self._warm_start(src, plan.message)
        self.events.record("checkpoint_verified", path=src.path, epoch=src.epoch)
        latest = self.layout.checkpoint("checkpoint_latest.pth")
        if plan.stage:
            staged = self.ckpts.stage_as_latest(Path(src.path))
            log.info("resuming from %s (epoch %s), newer than what --c would load: staged as %s",
                     src.path, src.epoch, staged.name)
            self.events.record("checkpoint_staged", source=src.path, path=str(staged), epoch=src.epoch)
        if (plan.stage or Path(src.path) == latest) and src.epoch is not None:
            self.ckpts.snapshot(latest, src.epoch)
        self._expect_epoch, self._resume_confirmed = src.epoch, False
        self._verified_epoch = src.epoch
        self._warm_weights = None  # the warm-started training has checkpoints of its own now
        return None

    def _warm_start(self, src: Verdict, message: str) -> str:
        keep = self.layout.supervisor_dir / "warm_start" / Path(src.path).name
        if Path(src.path) != keep:  # not a repeat from the kept copy
            keep.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(Path(src.path), keep)
        self._warm_weights = str(keep)
        # The fresh training must not meet the incompatible checkpoints (nor our snapshots of them) on its next --c.
        for path in [*self.layout.existing_checkpoints(), *self.ckpts.snapshots()]:
            self.ckpts.set_aside(path)
        log.warning("WARNING: %s", message)
        self.events.record("warm_start", path=src.path, weights=str(keep), epoch=src.epoch, warning=message)
        return str(keep)

    # ---- safety ----

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.queue.put(StopRequested(signal.Signals(signum).name))

        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_orphans(self, previous: dict[str, Any]) -> None:
        """A trainer left by a supervisor that died must not run beside the one we are about to start.

        We terminate it rather than adopt it: a process we did not spawn cannot be wait()ed for, so its
        exit status (and with it the classification of its failure) would be lost.
        """
        orphans = marked_processes(str(self.layout.fold_dir))
        if not orphans:
            return
        pids = [p.pid for p in orphans]
        log.warning("a trainer of this run is still alive without a supervisor (pids %s, previous supervisor "
                    "pid %s); stopping it before resuming", pids, previous.get("supervisor_pid"))
        stopped = stop_tree(None, str(self.layout.fold_dir), self.ctx.config.process.stop_grace_s, orphans)
        self.events.record("orphan_stopped", pids=stopped, previous_pid=previous.get("pid"))

    def _ensure_stopped(self) -> None:
        """On any way out, leave nothing of the trainer's tree running."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.popen.poll() is None:
            log.warning("stopping trainer pid %d on the way out", proc.pid)
            proc.terminate()
            try:
                proc.popen.wait(timeout=self.ctx.config.process.stop_grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_tree(proc.pid if proc else None, str(self.layout.fold_dir), self.leftover_grace_s)

    # ---- state.json ----

    def _persist(self, s: LoopState) -> None:
        self._last_state = s
        self._persist_extra()

    def _persist_extra(self) -> None:
        s = self._last_state
        proc = self.proc
        total = self._total_epochs()
        self.store.save({
            "schema": 1,
            "state": s.phase.value,
            "attempt": s.attempt,
            "restarts": s.restarts,
            "max_restarts": self.decider.policy.max_restarts,
            "best_epoch": s.best_epoch,
            "epoch": self._epoch_now,
            "pid": proc.pid if proc else None,
            "pid_create_time": proc.create_time if proc else None,
            "supervisor_pid": os.getpid(),
            "last_exit": s.last_exit,
            "stop_reason": s.stop_reason,
            "exit_code": s.exit_code,
            "resumable": s.phase not in (Phase.FINISHED, Phase.FAILED),
            "verified_epoch": self._verified_epoch,
            "epoch_times": self._recent_epoch_times(),
            "attempt_status": self._watch.status(self.clock()) if self._watch and proc else None,
            "warm_start_weights": self._warm_weights,
            "next_launch_in_s": (round(s.deadline - self.clock(), 3)
                                 if s.phase is Phase.BACKOFF and s.deadline is not None else None),
            "fold_dir": str(self.layout.fold_dir),
            "config": str(self.ctx.config_path),
            "started_ts": self._started_ts,
            "num_epochs": total,
            "slurm_job_id": self._slurm_job,
        })
        if not (self.notifier.enabled or self.metrics is not None or self.on_status is not None):
            return  # nobody listens: no checkpoint stats on every step
        age = checkpoint_age_s(self.layout.fold_dir, self.wall())
        self.notifier.status(status_line(s.phase.value, s.attempt, self._epoch_now, total, age))
        if self.metrics is not None:
            self.metrics.update(s.phase.value, s.attempt, s.restarts, self._epoch_now, total, age)
        if self.on_status is not None:
            self.on_status({"state": s.phase.value, "attempt": s.attempt, "epoch": self._epoch_now,
                            "num_epochs": total, "checkpoint_age_s": age, "epoch_times": self._recent_epoch_times()})

    def _recent_epoch_times(self) -> list[float]:
        """This run's recent epoch durations: the running attempt's watch, else what state.json carried."""
        return self._watch.stall.epoch_times if self._watch else self._epoch_times

    def _total_epochs(self) -> int | None:
        """The trainer's num_epochs, once it wrote debug.json (read once per run: it does not change)."""
        if self._num_epochs is None and self.proc is not None:
            self._num_epochs = num_epochs(self.layout.fold_dir)
        return self._num_epochs


def incompatibility_report(v: Verdict, limit: int = 20) -> str:
    """A key-by-key diagnosis for the log."""
    lines = [f"checkpoint {v.path} (epoch {v.epoch}) does not fit the network the trainer builds:"]
    for title, items in (("missing in the checkpoint", v.missing_keys), ("unexpected in the checkpoint",
                                                                          v.unexpected_keys)):
        if items:
            lines.append(f"  {len(items)} key(s) {title}: " + ", ".join(items[:limit])
                         + (" ..." if len(items) > limit else ""))
    for key, ck, net in v.shape_mismatches[:limit]:
        lines.append(f"  shape of {key}: checkpoint {ck}, network {net}")
    lines += [f"  hint: {h}" for h in v.hints]
    blockers = warm_start_blockers(v)
    if blockers:
        lines.append("  The checkpoint is untouched. Restore the trainer/plans it was written with; a warm start "
                     "(-pretrained_weights) cannot help, nnU-Net needs every key outside seg_layers to match.")
    else:
        lines.append("  The checkpoint is untouched. Restore the trainer/plans it was written with, or set "
                     "checkpoint.on_incompatible: warm_start to start over from its weights.")
    return "\n".join(lines)

"""The runner: feeds events to the Decider and carries out its actions. It decides nothing itself.

One main thread drains one queue. Signal handlers, the file observer, the GPU monitor, the thread waiting for the
trainer and the background jobs only put items on it, so the loop never blocks for longer than a tick: a
verification, a GPU-memory wait or a stack dump runs as a job and comes back as an event.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Union

from supervisor.checkpoints import prepare
from supervisor.checkpoints.ahead import AheadVerifier
from supervisor.checkpoints.plan import ResumePlan
from supervisor.checkpoints.store import CheckpointStore
from supervisor.checkpoints.verdict import Verdict
from supervisor.checkpoints.verify import VerdictCache, expectations, network_request
from supervisor.command import build_argv, build_env, trainer_command
from supervisor.context import RunContext
from supervisor.core.lifecycle import Decider, LoopState
from supervisor.core.messages import (
    Action,
    CheckDisk,
    DumpStacks,
    Event,
    Exit,
    Kill,
    Launch,
    Launched,
    LaunchFailed,
    Prepare,
    Prepared,
    Record,
    RequestSave,
    Say,
    Spawn,
    StacksDumped,
    StopRequested,
    Terminate,
    Tick,
)
from supervisor.core.policy import RestartPolicy
from supervisor.core.rules import carried_over, save_timeout_s
from supervisor.daemon.activity import FileActivity
from supervisor.daemon.jobs import JobDone, Jobs
from supervisor.daemon.power import read_battery
from supervisor.daemon.process import ProcessOps, Spawner, Trainer
from supervisor.daemon.publish import Facts, Publisher
from supervisor.daemon.sensors import Sensors
from supervisor.deploy import slurm
from supervisor.deploy.sdnotify import Notifier
from supervisor.errors import LaunchError
from supervisor.gpu.monitor import GpuFault, GpuHealth, GpuMonitor, create_monitor, gpu_outcome, wait_memory_released
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore

if TYPE_CHECKING:
    from supervisor.core.power import BatteryReading
    from supervisor.observe.metrics import Metrics
    from supervisor.observe.notify import Notifications

log = logging.getLogger("nnunet_supervise")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
GPU_MEMORY_WAIT_S = 60.0


@dataclass(frozen=True)
class _MainExited:
    """From the waiter thread: the trainer's main process exited; its tree is being stopped."""

    proc: Trainer


@dataclass(frozen=True)
class _ChildGone:
    """From the waiter thread: the trainer's main process exited and what was left of its tree is stopped."""

    proc: Trainer
    returncode: int
    stopped: list[int]


@dataclass(frozen=True)
class _Wake:
    """From the file observer: something changed in the fold folder; look now rather than at the next tick."""


@dataclass(frozen=True)
class _VerifiedAhead:
    """From the ahead verifier's thread: verdicts on checkpoints the trainer just wrote (and their cache is filled)."""

    verdicts: list[Verdict]


@dataclass(frozen=True)
class _GpuReport:
    """From the GPU monitor's thread: a GpuFault or a changed GpuHealth."""

    report: GpuFault | GpuHealth


QueueItem = Union[Event, _MainExited, _ChildGone, _Wake, _GpuReport, _VerifiedAhead, JobDone]


class Runner:
    """Supervise one run until it finishes, gives up or is stopped; returns the exit code."""

    def __init__(self, ctx: RunContext, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 spawn: Spawner | None = None, ops: ProcessOps | None = None, tick_s: float = 2.0,
                 leftover_grace_s: float = 10.0, battery: Callable[[], BatteryReading | None] = read_battery,
                 notifier: Notifier | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.ctx, self.layout, self.clock, self.wall = ctx, ctx.layout, clock, wall
        self.ops = ops or (ProcessOps(spawn) if spawn is not None else ProcessOps())
        self.tick_s, self.leftover_grace_s = tick_s, leftover_grace_s
        cfg = ctx.config
        r = cfg.restart
        self.decider = Decider(RestartPolicy(r.max_restarts, r.backoff_initial_s, r.backoff_max_s,
                                             r.max_attempts_without_progress), cfg.process.stop_grace_s, rand,
                               disk_check_s=r.disk_check_s)
        self.queue: queue.SimpleQueue[QueueItem] = queue.SimpleQueue()
        self.jobs = Jobs(self.queue.put)
        self.events = EventLog(self.layout.events_file, wall)  # written only by _record
        self.store = StateStore(self.layout.state_file)
        self.notifier = notifier or Notifier()  # systemd Type=notify; a no-op elsewhere
        self.metrics = self._metrics()
        self.notifications = self._notifications()
        self.publisher = Publisher(self.layout.fold_dir, self.store, self.notifier, self.metrics, on_status)
        self.sensors = Sensors(ctx, self.ops, battery, [])
        self.ckpts = CheckpointStore(self.layout, cfg.checkpoint.snapshots)
        self.checker = prepare.Checker(expectations(ctx),
                                       network_request(ctx, cache=self.layout.supervisor_dir / "network-shapes.json"),
                                       build_env(ctx, attempt=0), VerdictCache())
        self.ahead = AheadVerifier(self._verify_ahead)
        self.verified_ahead: list[dict[str, Any]] = []  # the newest ahead verdicts, for state.json
        self.memory = prepare.Memory()
        self.gpu: GpuMonitor | None = None
        self.proc: Trainer | None = None
        self._old_tree: set[int] = set()  # the last attempt's pids, whose GPU memory must be freed first
        self._verifying: tuple[threading.Thread, list[tuple[list[Verdict], ResumePlan]]] | None = None
        self._held: list[Action] | None = None  # signals to the tree held back while its stacks are dumped
        self._expect_epoch: int | None = None  # the epoch the prepared attempt must resume at
        self._wake_pending = threading.Event()
        self._slurm_job: str | None = None
        self._last_state = LoopState()
        self._started_ts = wall()
        self._last_step: float | None = None
        self.main_loop_max_gap_s = 0.0

    def _metrics(self) -> Metrics | None:
        m = self.ctx.config.metrics
        if m.port is None and m.textfile is None:
            return None
        from supervisor.observe.metrics import Metrics  # prometheus_client only when metrics are asked for

        metrics = Metrics(str(self.layout.fold_dir), m.port, m.host, None if m.textfile is None else Path(m.textfile),
                          self.clock)
        self.events.listeners.append(metrics.count)
        return metrics

    def _notifications(self) -> Notifications | None:
        n = self.ctx.config.notify
        if not n.urls:
            return None
        from supervisor.observe.notify import Notifications  # apprise only when notifications are asked for

        notifications = Notifications(str(self.layout.fold_dir), list(n.urls), list(n.on), n.repeated_failures)
        self.events.listeners.append(notifications.on_event)
        return notifications

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
            self.ops.become_subreaper()
            previous = self.store.load()
            self._remember(previous)
            self._stop_orphans(previous)
            state = self._initial_state(previous)
            files.start()
            self._start_gpu_monitor()
            self.ahead.start()
            with self._signals():
                self.notifier.ready(f"supervising {self.ctx.config_path}")
                code = self._loop(state)
                self.notifier.stopping(f"{self._last_state.phase.value}: exit {code}")
                self._maybe_requeue(code)
                return code
        finally:
            if self.metrics is not None:
                self.metrics.close()
            if self.notifications is not None:
                self.notifications.close()
            files.stop()
            self.ahead.stop()
            if self.gpu is not None:
                self.gpu.stop()
            self._ensure_stopped()
            lock.release()

    def _remember(self, previous: dict[str, Any]) -> None:
        """What the previous supervisor of this run knew: checkpoints resumed from, a warm start, epoch times."""
        verified = previous.get("verified_epoch")
        warm = previous.get("warm_start_weights")
        self.memory = prepare.Memory(had_checkpoints=verified is not None,
                                     verified_epoch=verified if isinstance(verified, int) else None,
                                     warm_weights=warm if isinstance(warm, str) else None)
        times = previous.get("epoch_times")
        self.sensors.carry_epoch_times([float(t) for t in times if isinstance(t, (int, float))
                                        and not isinstance(t, bool)] if isinstance(times, list) else [])

    def _initial_state(self, previous: dict[str, Any]) -> LoopState:
        facts = slurm.job_facts(os.environ)
        if facts:
            self._slurm_job = facts["slurm_job_id"]
            self._record(Record("slurm", dict(facts)))
            log.info("inside SLURM job %s (restart count %s)", self._slurm_job, facts.get("slurm_restart_count", "0"))
        return carried_over(previous, self._slurm_job)

    def _maybe_requeue(self, code: int) -> None:
        """Preempted inside a SLURM job: ask SLURM to run the job again (it resumes from the checkpoint)."""
        if not slurm.should_requeue(self._last_state.stop_reason, code, os.environ):
            return
        ok, said = slurm.requeue(os.environ)
        self._record(Record("requeue", {"job": self._slurm_job, "ok": ok, "output": said}))
        if ok:
            log.info("requeued SLURM job %s: the next incarnation resumes from the checkpoint", self._slurm_job)
        else:
            log.error("scontrol requeue %s failed: %s", self._slurm_job, said)

    def _loop(self, state: LoopState) -> int:
        pending: deque[Event] = deque([self.sensors.begin(self.memory.had_checkpoints)])
        while True:
            if not pending:
                pending.extend(self._next_events(state))
            now = self.clock()
            if self._last_step is not None:
                self.main_loop_max_gap_s = max(self.main_loop_max_gap_s, now - self._last_step)
            self._last_step = now
            state, actions = self.decider.step(state, pending.popleft(), now)
            self._persist(state)
            self.notifier.watchdog(self.clock())  # from the loop itself: a hung loop stops pinging
            for action in actions:
                if isinstance(action, Exit):
                    return action.code
                follow_up = self._perform(action)
                if follow_up is not None:
                    pending.append(follow_up)

    def _next_events(self, state: LoopState) -> list[Event]:
        """Wait for the next queue item (at most a tick, less before a deadline) and turn it into events."""
        timeout = self.tick_s
        if self.notifier.watchdog_s is not None:
            timeout = min(timeout, self.notifier.watchdog_s / 4)  # pings due at half the interval stay on time
        if state.deadline is not None:
            timeout = max(0.0, min(timeout, state.deadline - self.clock()))
        stall = self.sensors.stall_deadline()
        if stall is not None:  # wake right at the stall deadline, not up to a tick after it
            timeout = max(0.0, min(timeout, stall - self.clock() + 0.01))
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return self._look()
        if isinstance(item, _Wake):
            self._wake_pending.clear()  # before reading: a change from now on queues a fresh wake
            return self._look()
        if isinstance(item, _MainExited):
            self.sensors.main_exited()
            return [Tick()]
        if isinstance(item, _ChildGone):
            return [self._child_gone(item)]
        if isinstance(item, _GpuReport):
            records, abort = gpu_outcome(item.report)
            self._record_all(records)
            return [abort] if abort is not None else [Tick()]
        if isinstance(item, JobDone):
            return [self._job_done(item)]
        if isinstance(item, _VerifiedAhead):
            self._verified(item.verdicts)
            return [Tick()]
        if isinstance(item, StopRequested) and self.ctx.config.cooperative.enabled and self.proc is not None:
            return [replace(item, save_timeout_s=save_timeout_s(self.ctx.config.cooperative.stop_timeout_s,
                                                                self.sensors.recent_epoch_times()))]
        return [item]

    def _look(self) -> list[Event]:
        look = self.sensors.look(self.clock())
        self._record_all(look.records)
        if look.written:
            self.ahead.submit(look.written)
        if look.epoch_changed:
            self._persist(self._last_state)
        return look.events or [Tick()]

    def _file_changed(self) -> None:
        """From the watchdog thread: one wake in the queue at a time, never a change left unread (a dropped
        wake would delay seeing an epoch line to the next tick, and so inflate the stall clock)."""
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self.queue.put(_Wake())

    def _child_gone(self, gone: _ChildGone) -> Event:
        if gone.stopped:
            log.info("stopped %d leftover process(es) of the trainer's tree: %s", len(gone.stopped), gone.stopped)
        self._old_tree = {gone.proc.pid, *gone.stopped}
        self.proc = None
        self._held = None  # nothing left to signal
        return self.sensors.exited(gone.returncode)

    def _job_done(self, done: JobDone) -> Event:
        self.jobs.finished(done)
        if done.error is not None:
            raise done.error  # a bug of ours: the supervisor ends (exit 70), as it would have on the main thread
        if done.name == "launch":
            outcome, event = done.result
            self.memory, self._expect_epoch = outcome.memory, outcome.expect_epoch
            self._record_all(outcome.records)
            return event  # type: ignore[no-any-return]
        if done.name == "dump":
            held, self._held = self._held or [], None
            for action in held:  # the signals held back while the stacks were read
                self._perform(action)
            return done.result  # type: ignore[no-any-return]
        raise RuntimeError(f"unknown job {done.name}")

    # ---- actions ----

    def _perform(self, action: Action) -> Event | None:
        if isinstance(action, Record):
            self._record(action)
        elif isinstance(action, Say):
            log.info("%s", action.message)
        elif isinstance(action, Launch):
            self._start_launch(action)
        elif isinstance(action, Spawn):
            return self._spawn(action)
        elif isinstance(action, Prepare):
            self._start_verifying()
        elif isinstance(action, CheckDisk):
            records, checked = self.sensors.disk()
            self._record_all(records)
            return checked
        elif isinstance(action, DumpStacks):
            self._start_dump()
        elif isinstance(action, (Terminate, Kill, RequestSave)):
            self._signal(action)
        return None

    def _record(self, record: Record) -> None:
        """The one place events.jsonl is written."""
        self.events.record(record.event, **record.fields)

    def _record_all(self, records: list[Record]) -> None:
        for r in records:
            self._record(r)

    def _signal(self, action: Terminate | Kill | RequestSave) -> None:
        if self._held is not None:
            self._held.append(action)  # after the stack dump: a SIGCONT'ed, SIGTERMed tree shows nothing
            return
        proc = self.proc
        if proc is None:
            return
        if isinstance(action, Terminate):
            proc.terminate()
        elif isinstance(action, RequestSave):
            proc.request_save()
        else:
            proc.kill()

    def _start_dump(self) -> None:
        attempt, out = self.sensors.attempt, self.sensors.stall_dump_path()
        marker = str(self.layout.fold_dir)
        self._held = []

        def dump() -> StacksDumped:
            said = self.ops.dump_stacks(self.ops.tree(marker), out)
            log.warning("attempt %d stalled: %s", attempt, said)
            return StacksDumped(attempt, str(out), said)

        self.jobs.start("dump", dump)

    # ---- launching ----

    def _start_launch(self, action: Launch) -> None:
        """Prepare the attempt off the main thread; its answer (Prepared or LaunchFailed) comes back as a job."""
        memory, old_tree = self.memory, self._old_tree
        self._old_tree = set()
        check = bool(action.resume or self.ckpts.candidates())

        def work() -> tuple[prepare.Outcome, Event]:
            outcome = prepare.Outcome(memory)
            if check:
                verdicts, plan = self._take_verified()
                outcome = prepare.carry_out(plan, verdicts, self.ckpts, memory)
                if outcome.failure is not None:
                    kind, message = outcome.failure
                    return outcome, LaunchFailed(message, kind, outcome.failure_record)
            self._wait_gpu_memory(old_tree)
            # every relaunch uses --c (on an emptied folder nnU-Net then starts over, which the plan allowed)
            return outcome, Prepared(action.resume and outcome.pretrained is None, outcome.pretrained)

        self.jobs.start("launch", work)

    def _spawn(self, action: Spawn) -> Event:
        logs_before = set(self.layout.training_logs())
        log_path = self.layout.attempt_log(action.attempt)
        try:
            argv = build_argv(self.ctx, trainer_command(self.ctx), action.resume, action.pretrained)
            env = build_env(self.ctx, action.attempt)
            with open(log_path, "a") as f:
                f.write(f"# nnunet-supervise attempt {action.attempt}: {' '.join(argv)}\n")
            proc = self.ops.spawn(argv, env, log_path, self.layout.fold_dir)
        except (OSError, LaunchError) as exc:
            return LaunchFailed(str(exc))
        self.proc = proc
        self.sensors.launched(action.attempt, logs_before, self.clock(), self._expect_epoch if action.resume else None)
        threading.Thread(target=self._wait_for, args=(proc,), name=f"wait-attempt-{action.attempt}",
                         daemon=True).start()
        return Launched(proc.pid, tuple(argv), action.resume)

    def _wait_for(self, proc: Trainer) -> None:
        """The waiter thread: the trainer's exit, then its leftover workers stopped (they can take seconds)."""
        returncode = proc.wait()
        assert returncode is not None
        self.queue.put(_MainExited(proc))
        stopped = proc.stop_leftovers(self.leftover_grace_s)
        self.queue.put(_ChildGone(proc, returncode, stopped))

    # ---- checkpoints before a launch ----

    def _verify_ahead(self, paths: list[Path]) -> None:
        """In the ahead verifier's thread: verify (which fills the cache) and tell the main loop."""
        verdicts, _ = self.checker.verify(paths, nice=True)
        self.queue.put(_VerifiedAhead(verdicts))

    def _verified(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            # An early word about a whole file that cannot be resumed (NaN weights, a network that does not fit);
            # the relaunch quarantines or stops on it, as for any checkpoint. A torn zip is left unsaid: plain
            # nnU-Net rewrites checkpoints in place, so one may still be being written.
            if v.structure_ok and not v.ok:
                log.warning("checkpoint %s as just written is not usable for a resume: %s", v.path, v.reason())
        self.verified_ahead = [{"path": v.path, "epoch": v.epoch, "ok": v.ok} for v in verdicts]
        self._persist(self._last_state)

    def _start_verifying(self) -> None:
        """Verify in the background while the backoff runs; the launch job collects the result."""
        box: list[tuple[list[Verdict], ResumePlan]] = []
        thread = threading.Thread(target=lambda: box.append(self._verify_now()), name="verify", daemon=True)
        thread.start()
        self._verifying = (thread, box)

    def _take_verified(self) -> tuple[list[Verdict], ResumePlan]:
        verifying, self._verifying = self._verifying, None
        if verifying is not None:
            thread, box = verifying
            thread.join()
            if box:
                return box[0]
        return self._verify_now()

    def _verify_now(self) -> tuple[list[Verdict], ResumePlan]:
        self.ahead.settle(timeout_s=600)  # reuse a running ahead verification's answer rather than race it
        cfg = self.ctx.config.checkpoint
        return prepare.plan(self.checker, self.ckpts, self.memory, allow_fresh_start=cfg.allow_fresh_start,
                            on_incompatible=cfg.on_incompatible)

    # ---- the GPU ----

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

    def _wait_gpu_memory(self, old_tree: set[int]) -> None:
        """Before a relaunch (in the launch job): the old tree's CUDA memory must be free, or the new trainer may OOM
        at once."""
        if self.gpu is None or not old_tree:
            return
        held = wait_memory_released(self.gpu.nvml, self.gpu.gpus, old_tree, timeout_s=GPU_MEMORY_WAIT_S)
        if held:
            log.warning("pids %s still hold GPU memory after %.0f s; launching anyway", held, GPU_MEMORY_WAIT_S)

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
        marker = str(self.layout.fold_dir)
        pids = self.ops.tree(marker)
        if not pids:
            return
        log.warning("a trainer of this run is still alive without a supervisor (pids %s, previous supervisor "
                    "pid %s); stopping it before resuming", pids, previous.get("supervisor_pid"))
        stopped = self.ops.stop_tree(marker, self.ctx.config.process.stop_grace_s)
        self._record(Record("orphan_stopped", {"pids": sorted({*pids, *stopped}), "previous_pid": previous.get("pid")}))

    def _ensure_stopped(self) -> None:
        """On any way out, leave nothing of the trainer's tree running."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.wait(0) is None:
            log.warning("stopping trainer pid %d on the way out", proc.pid)
            proc.terminate()
            if proc.wait(self.ctx.config.process.stop_grace_s) is None:
                proc.kill()
        self.ops.stop_tree(str(self.layout.fold_dir), self.leftover_grace_s, pgid=proc.pid if proc else None)

    # ---- state.json ----

    def _persist(self, s: LoopState) -> None:
        self._last_state = s
        proc = self.proc
        sensors = self.sensors
        facts = Facts(
            pid=proc.pid if proc else None, pid_create_time=proc.create_time if proc else None,
            epoch=sensors.epoch_now, num_epochs=sensors.total_epochs(), epoch_times=sensors.recent_epoch_times(),
            attempt_status=sensors.attempt_status(self.clock()) if proc else None, memory=self.memory,
            max_restarts=self.decider.policy.max_restarts, fold_dir=str(self.layout.fold_dir),
            config=str(self.ctx.config_path), started_ts=self._started_ts, slurm_job_id=self._slurm_job,
            main_loop_max_gap_s=self.main_loop_max_gap_s, verified_ahead=self.verified_ahead)
        self.publisher.publish(s, facts, self.clock(), self.wall())


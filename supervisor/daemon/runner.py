"""The engine: runs one stage (a fold's training, a dataset's preprocessing) under the lifecycle. It feeds events
to the Decider and carries out its actions, and decides nothing itself; what depends on the work being done (its
command, progress, "done" test, verification, causes) is the stage's (supervisor.stages.stage.Stage).

One main thread drains one queue. Signal handlers, the file observer, the GPU monitor, the thread waiting for the
trainer and the background jobs only put items on it, so the loop never blocks for longer than a tick: a
verification, a GPU-memory wait or a stack dump runs as a job and comes back as an event.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from supervisor.core.power import BatteryWatch, power_outcome
from supervisor.core.rules import Every, carried_over
from supervisor.daemon.activity import FileActivity
from supervisor.daemon.inbox import ChildGone, GpuReport, Inbox, MainExited, StageNews, Wake
from supervisor.daemon.jobs import JobDone, Jobs
from supervisor.daemon.power import read_battery
from supervisor.daemon.process import ProcessOps, Spawner, Trainer
from supervisor.daemon.publish import Facts, Publisher
from supervisor.deploy import slurm
from supervisor.deploy.sdnotify import Notifier
from supervisor.errors import LaunchError, RunDirError
from supervisor.gpu.monitor import GpuMonitor, gpu_outcome, monitor_for_run, wait_memory_released
from supervisor.rundir import recover
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.lock import RunLock
from supervisor.rundir.logs import compress_old_attempt_logs
from supervisor.rundir.statefile import StateStore
from supervisor.stages.stage import Look, Stage
from supervisor.stages.training.stage import TrainingStage

if TYPE_CHECKING:
    from supervisor.core.power import BatteryReading

log = logging.getLogger("nnunet_supervise")

GPU_MEMORY_WAIT_S = 60.0


class Engine:
    """Supervise one stage until it finishes, gives up or is stopped; returns the exit code."""

    def __init__(self, stage: Stage, ops: ProcessOps, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 tick_s: float = 2.0, leftover_grace_s: float = 10.0,
                 battery: Callable[[], BatteryReading | None] = read_battery, notifier: Notifier | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None, queue: Inbox | None = None) -> None:
        self.stage, self.files, self.clock, self.wall = stage, stage.files, clock, wall
        self.ops = ops
        self.tick_s, self.leftover_grace_s = tick_s, leftover_grace_s
        cfg = stage.config
        r = cfg.restart
        self.decider = Decider(RestartPolicy(r.max_restarts, r.backoff_initial_s, r.backoff_max_s,
                                             r.max_attempts_without_progress), cfg.process.stop_grace_s, rand,
                               disk_check_s=r.disk_check_s, ladder=stage.ladder, words=stage.words)
        self.queue = queue or Inbox()
        self.jobs = Jobs(self.queue.put)
        self.events = EventLog(self.files.events_file, wall)  # written only by _record
        self.store = StateStore(self.files.state_file)
        self.notifier = notifier or Notifier()  # systemd Type=notify; a no-op elsewhere
        self.publisher = Publisher.for_stage(stage, self.notifier, on_status, self.events, clock)
        self.metrics = self.publisher.metrics
        self.battery = battery
        self.power = BatteryWatch(cfg.power.battery_stop_percent)
        self.power_every = Every(cfg.power.check_every_s)
        self.gpu: GpuMonitor | None = None
        self.proc: Trainer | None = None
        self._old_tree: set[int] = set()  # the last attempt's pids, whose GPU memory must be freed first
        self._held: list[Action] | None = None  # signals to the tree held back while its stacks are dumped
        self._slurm_job: str | None = None
        self._last_state = LoopState()
        self._started_ts = wall()
        self._last_step: float | None = None
        self.main_loop_max_gap_s = 0.0
        self._settle_error: Exception | None = None  # from the waiting thread's stage.settle

    # ---- the loop ----

    def run(self) -> int:
        lock = RunLock(self.files.lock_file)
        try:
            self.files.supervisor_dir.mkdir(parents=True, exist_ok=True)
            moved = recover.set_aside_wrong_kinds(self.files)  # a FIFO or a folder in a file's place: never opened
            lock.acquire()  # LockedError -> exit 3, before anything else is touched
        except OSError as exc:  # exit 2, not 70: a restart cannot make a read-only folder writable
            raise RunDirError(f"cannot use the run directory {self.files.supervisor_dir}: {exc}") from None
        log.info("supervising the %s of %s (run directory %s)", self.stage.name, self.stage.config_path,
                 self.files.supervisor_dir)
        log.info("%s", self.ops.protect_from_oom())
        own = str(self.files.supervisor_dir)
        # Our own state.json/events.jsonl writes must not wake us; the trainer's attempt log should.
        files = FileActivity([self.stage.work_dir], self.queue.wake, min_interval_s=0.0,
                             ignore=lambda path: path.startswith(own) and not path.endswith(".log"))
        try:
            self.ops.become_subreaper()
            previous, damaged = recover.previous_state(self.files)
            self._record_all(moved + damaged)
            self.stage.remember(previous)
            self._stop_orphans(previous)
            state = self._initial_state(previous)
            files.start()
            self._start_gpu_monitor()
            self.stage.start()
            with self.queue.signals():
                self.notifier.ready(f"supervising {self.stage.config_path}")
                code = self._loop(state)
                self.notifier.stopping(f"{self._last_state.phase.value}: exit {code}")
                requeued = slurm.requeue_if_preempted(self._last_state.stop_reason, code, os.environ)
                if requeued is not None:
                    self._record(requeued)
                return code
        finally:
            self.publisher.close()
            files.stop()
            self.stage.stop()
            if self.gpu is not None:
                self.gpu.stop()
            self._ensure_stopped()
            lock.release()

    def _initial_state(self, previous: dict[str, Any]) -> LoopState:
        self._slurm_job, record = slurm.job_record(os.environ)
        if record is not None:
            self._record(record)
        return carried_over(previous, self._slurm_job)

    def _loop(self, state: LoopState) -> int:
        pending: deque[Event] = deque([self.stage.begin()])
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
        stall = self.stage.stall_deadline()
        if stall is not None:  # wake right at the stall deadline, not up to a tick after it
            timeout = max(0.0, min(timeout, stall - self.clock() + 0.01))
        item = self.queue.get(timeout)
        if item is None or isinstance(item, Wake):
            return self._look()
        if isinstance(item, MainExited):
            self.stage.main_exited()
            return [Tick()]
        if isinstance(item, ChildGone):
            return [self._child_gone(item)]
        if isinstance(item, GpuReport):
            records, abort = gpu_outcome(item.report)
            self._record_all(records)
            return [abort] if abort is not None else [Tick()]
        if isinstance(item, JobDone):
            return [self._job_done(item)]
        if isinstance(item, StageNews):
            self.stage.news(item.payload)
            self._persist(self._last_state)
            return [Tick()]
        if isinstance(item, StopRequested) and self.proc is not None:
            return [self.stage.stop_request(item)]
        return [item]

    def _look(self) -> list[Event]:
        now = self.clock()
        power = self._power(now)
        look = self.stage.look(now) if self.proc is not None else Look()
        self._record_all(power.records + look.records)
        if look.changed:
            self._persist(self._last_state)
        return power.events + look.events or [Tick()]

    def _power(self, now: float) -> Look:
        """The battery, when due: a power event may stop any stage resumably."""
        look = Look()
        if self.power_every.due(now):
            notices = self.power.observe(self.battery())
            for n in notices:
                log.warning("%s", n.message)
            look.records, stop = power_outcome(notices)
            if stop is not None:
                look.events.append(stop)
        return look

    def _child_gone(self, gone: ChildGone) -> Event:
        if gone.stopped:
            log.info("stopped %d leftover process(es) of the %s's tree: %s", len(gone.stopped),
                     self.stage.words.process, gone.stopped)
        self._old_tree = {gone.proc.pid, *gone.stopped}
        self.proc = None
        self._held = None  # nothing left to signal
        error, self._settle_error = self._settle_error, None
        if error is not None:
            raise error
        event = self.stage.exited(gone.returncode)
        self._record_all(self.stage.drain())
        return event

    def _job_done(self, done: JobDone) -> Event:
        self.jobs.finished(done)
        if done.error is not None:
            raise done.error  # a bug of ours: the supervisor ends (exit 70), as it would have on the main thread
        if done.name == "launch":
            outcome, event = done.result
            self._record_all(self.stage.applied(outcome))
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
            old_tree, self._old_tree = self._old_tree, set()
            self.jobs.start("launch", self.stage.prepare(action.resume, lambda: self._wait_gpu_memory(old_tree),
                                                         action.env))
        elif isinstance(action, Spawn):
            return self._spawn(action)
        elif isinstance(action, Prepare):
            self.stage.preparing()
        elif isinstance(action, CheckDisk):
            records, checked = self.stage.disk()
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
        attempt, out = self.stage.attempt, self.stage.stall_dump_path()
        marker = str(self.stage.work_dir)
        self._held = []

        def dump() -> StacksDumped:
            said = self.ops.dump_stacks(self.ops.tree(marker), out)
            log.warning("attempt %d stalled: %s", attempt, said)
            return StacksDumped(attempt, str(out), said)

        self.jobs.start("dump", dump)

    # ---- launching ----

    def _spawn(self, action: Spawn) -> Event:
        log_path = self.files.attempt_log(action.attempt)
        try:
            argv, env = self.stage.command(action)
            sized = self.stage.sized
            env.update(sized)  # fitted to this allocation, never over a variable the user set
            env.update(action.env)  # the remedies in effect (the Decider chose them; user settings were respected)
            with open(log_path, "a") as f:
                f.write(f"# nnunet-supervise attempt {action.attempt}: {' '.join(argv)}\n")
                for var, value in sized.items():
                    f.write(f"# nnunet-supervise sized to the allocation: {var}={value}\n")
                for var, value in action.env:
                    f.write(f"# nnunet-supervise remedy in effect: {var}={value}\n")
            proc = self.ops.spawn(argv, env, log_path, self.stage.work_dir)
        except (OSError, LaunchError) as exc:
            return LaunchFailed(str(exc))
        self.proc = proc
        self.stage.launched(action, proc.pid, self.clock())
        threading.Thread(target=self._wait_for, args=(proc,), name=f"wait-attempt-{action.attempt}",
                         daemon=True).start()
        return Launched(proc.pid, tuple(argv), action.resume, action.validate, tuple(sorted(sized.items())))

    def _wait_for(self, proc: Trainer) -> None:
        """The waiter thread: the trainer's exit, then its leftover workers stopped (they can take seconds)."""
        returncode = proc.wait()
        assert returncode is not None
        self.queue.put(MainExited(proc))
        stopped = proc.stop_leftovers(self.leftover_grace_s)
        # a crash loop's logs stay bounded: the first and the newest as they are, the rest gzipped (here, in the
        # waiting thread: compressing a full log takes a second)
        compress_old_attempt_logs(self.files.supervisor_dir, self.stage.config.process.attempt_logs_kept)
        try:
            self.stage.settle(returncode)  # the slow look at what it left, here rather than on the main loop
        except Exception as exc:  # a bug of ours: raised on the main thread (exit 70), never a loop left waiting
            self._settle_error = exc
        self.queue.put(ChildGone(proc, returncode, stopped))

    # ---- the GPU ----

    def _start_gpu_monitor(self) -> None:
        request = self.stage.gpu_request()
        if request is None:
            return
        device, visible, num_gpus = request
        self.gpu, line = monitor_for_run(device, visible, num_gpus, self.queue.put_gpu_report)
        log.info("%s", line)
        if self.gpu is not None:
            self.gpu.start()

    def _wait_gpu_memory(self, old_tree: set[int]) -> None:
        """Before a relaunch (in the launch job): the old tree's CUDA memory must be free, or the new trainer may OOM
        at once."""
        if self.gpu is None or not old_tree:
            return
        held = wait_memory_released(self.gpu.nvml, self.gpu.gpus, old_tree, timeout_s=GPU_MEMORY_WAIT_S)
        if held:
            log.warning("pids %s still hold GPU memory after %.0f s; launching anyway", held, GPU_MEMORY_WAIT_S)

    # ---- safety ----

    def _stop_orphans(self, previous: dict[str, Any]) -> None:
        """A trainer left by a supervisor that died must not run beside the one we are about to start.

        We terminate it rather than adopt it: a process we did not spawn cannot be wait()ed for, so its
        exit status (and with it the classification of its failure) would be lost.
        """
        marker = str(self.stage.work_dir)
        pids = self.ops.tree(marker)
        if not pids:
            return
        log.warning("a %s of this run is still alive without a supervisor (pids %s, previous supervisor "
                    "pid %s); stopping it before resuming", self.stage.words.process, pids,
                    previous.get("supervisor_pid"))
        stopped = self.ops.stop_tree(marker, self.stage.config.process.stop_grace_s)
        self._record(Record("orphan_stopped", {"pids": sorted({*pids, *stopped}), "previous_pid": previous.get("pid")}))

    def _ensure_stopped(self) -> None:
        """On any way out, leave nothing of the trainer's tree running."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.wait(0) is None:
            log.warning("stopping trainer pid %d on the way out", proc.pid)
            proc.terminate()
            if proc.wait(self.stage.config.process.stop_grace_s) is None:
                proc.kill()
        self.ops.stop_tree(str(self.stage.work_dir), self.leftover_grace_s, pgid=proc.pid if proc else None)

    # ---- state.json ----

    def _persist(self, s: LoopState) -> None:
        self._last_state = s
        proc = self.proc
        facts = Facts(
            stage_name=self.stage.name, pid=proc.pid if proc else None,
            pid_create_time=proc.create_time if proc else None, max_restarts=self.decider.policy.max_restarts,
            config=str(self.stage.config_path), started_ts=self._started_ts, slurm_job_id=self._slurm_job,
            main_loop_max_gap_s=self.main_loop_max_gap_s, stage=self.stage.facts(self.clock(), proc is not None))
        self.publisher.publish(s, facts, self.clock(), self.wall())


class Runner(Engine):
    """The engine running one fold's training (`run CONFIG`)."""

    def __init__(self, ctx: RunContext, *, spawn: Spawner | None = None, ops: ProcessOps | None = None,
                 sized: dict[str, str] | None = None, **kwargs: Any) -> None:
        ops = ops or ProcessOps(spawn, log_cap=ctx.config.process.attempt_log_max_bytes)
        queue = Inbox()
        self.ctx = ctx
        self.training = TrainingStage(ctx, ops, lambda item: queue.put(StageNews(item)), sized)
        super().__init__(self.training, ops, queue=queue, **kwargs)

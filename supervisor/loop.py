"""The pure decision loop: step(state, event, now) -> (state, actions). No processes, no clocks, no I/O.

Lifecycle (every transition is in `Decider.step`; anything else raises IllegalTransition):

    INIT ──Begin──▶ STARTING ──Launched──▶ RUNNING ──ChildExited(finished)──────────────▶ FINISHED (exit 0)
     │                 │                      │ ──ChildExited(not retryable / give up)──▶ FAILED   (exit 1)
     │ Begin(finished) │ LaunchFailed         │ ──ChildExited(retryable)──▶ BACKOFF ──deadline──▶ STARTING
     ▼                 ▼                      │ ──StopRequested──▶ STOPPING ──ChildExited──▶ STOPPED (exit 75)
    FINISHED         FAILED                   │                     └─deadline: Kill (stays STOPPING)
                                              │ ──Abort──▶ STOPPING ──ChildExited──▶ FAILED (exit 1)
                                              │ ──Recycle──▶ STOPPING ──ChildExited──▶ as a failure of that kind
                                              │                (a stall: BACKOFF; a lingering finish: FINISHED)
                                   BACKOFF ──StopRequested──▶ STOPPED (exit 75)
                                   BACKOFF ──Abort──▶ FAILED (exit 1)
                                   BACKOFF (disk full) ──deadline──▶ CheckDisk ──DiskChecked(enough)──▶ STARTING
    Cooperative mode: RUNNING ──StopRequested(save_timeout_s)──▶ STOPPING (saving: RequestSave, wait for its
    exit 75; at the deadline SIGTERM, then SIGKILL as usual)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Union

from supervisor.classify import Classification, classify_exit, parse_state_dict_error
from supervisor.policy import RestartPolicy

EXIT_FINISHED = 0
EXIT_GAVE_UP = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_CRASHED = 70  # EX_SOFTWARE: the supervisor itself failed (a bug); systemd restarts it, unlike 1
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request, resumable


class Phase(str, Enum):
    INIT = "init"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in (Phase.FINISHED, Phase.FAILED, Phase.STOPPED)


class IllegalTransition(RuntimeError):
    """An event arrived in a phase where it cannot happen: a bug in the runner, never ignored."""


@dataclass(frozen=True)
class LoopState:
    """Everything the decisions depend on."""

    phase: Phase = Phase.INIT
    attempt: int = 0  # number of the latest attempt; continues across supervisor runs (attempt-N.log)
    restarts: int = 0  # relaunches after a failure, by this supervisor
    failures_in_row: int = 0  # failures since the last attempt that made progress (backoff exponent)
    attempts_without_progress: int = 0
    best_epoch: int = 0  # most epochs completed seen so far (training log or checkpoint)
    deadline: Union[float, None] = None  # monotonic time of the next timed decision
    stop_reason: Union[str, None] = None
    abort: Union[Abort, None] = None  # set when STOPPING was entered to give up rather than to pause
    recycle: Union[Recycle, None] = None  # set when STOPPING was entered to relaunch (a stall) or finish
    killed: bool = False
    saving: bool = False  # STOPPING: the trainer was asked to save and exit (cooperative mode); not yet SIGTERMed
    waiting_disk: bool = False  # BACKOFF: the last attempt ran out of disk; relaunch only once there is space
    exit_code: Union[int, None] = None
    last_exit: Union[dict[str, Any], None] = None


# ---- actions (carried out by the runner) ----

@dataclass(frozen=True)
class Launch:
    attempt: int
    resume: bool  # checkpoints may exist: verify them and resume from the newest valid one


@dataclass(frozen=True)
class Prepare:
    """Start verifying checkpoints for the next launch now, while the backoff runs."""


@dataclass(frozen=True)
class Terminate:
    """SIGTERM the trainer's process group."""

    grace_s: float


@dataclass(frozen=True)
class DumpStacks:
    """Record where the hung tree is stuck (py-spy) before it is stopped; the `stall` event is already out."""


@dataclass(frozen=True)
class RequestSave:
    """Cooperative mode: ask the trainer (SIGUSR1) to save at the end of its epoch and exit 75."""


@dataclass(frozen=True)
class CheckDisk:
    """Measure the free space in the fold folder; answered by a DiskChecked event."""


@dataclass(frozen=True)
class Kill:
    """SIGKILL the trainer's whole tree."""


@dataclass(frozen=True)
class Record:
    """Append one event to events.jsonl."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Say:
    """One human-readable log line."""

    message: str


@dataclass(frozen=True)
class Exit:
    code: int


Action = Union[Launch, Prepare, Terminate, RequestSave, DumpStacks, CheckDisk, Kill, Record, Say, Exit]


# ---- events (facts, gathered by the runner) ----

@dataclass(frozen=True)
class Begin:
    finished: bool  # checkpoint_final.pth + validation/summary.json already there
    resume: bool  # a checkpoint exists, so the first launch uses --c
    best_epoch: int = 0


@dataclass(frozen=True)
class Launched:
    pid: int
    argv: tuple[str, ...]
    resume: bool


@dataclass(frozen=True)
class LaunchFailed:
    """The launch did not happen: the trainer could not start, or no checkpoint may be resumed."""

    reason: str
    kind: str = "launch_failed"
    event: Union[Record, None] = None  # e.g. incompatible_checkpoint with its three lists


@dataclass(frozen=True)
class Abort:
    """The running attempt must be stopped and the supervisor give up (e.g. --c started from scratch)."""

    kind: str
    message: str


@dataclass(frozen=True)
class Recycle:
    """The running attempt must be stopped and its end counted as `kind` (a stall, a lingering finish)."""

    kind: str  # the exit classification, e.g. "stall" (retryable) or "lingering" (finished, did not exit)
    message: str
    fields: dict[str, Any] = field(default_factory=dict)  # recorded with the `kind` event


@dataclass(frozen=True)
class ChildExited:
    returncode: int
    log_tail: str
    finished: bool
    epochs_completed: int  # furthest epoch this attempt reached (log), or the checkpoint's


@dataclass(frozen=True)
class StopRequested:
    reason: str  # signal name (SIGTERM, ...) or a reason in words
    save_timeout_s: Union[float, None] = None  # cooperative trainer: how long it may take to save and exit


@dataclass(frozen=True)
class DiskChecked:
    free_bytes: int
    needed_bytes: int


@dataclass(frozen=True)
class Tick:
    """Time passed; lets deadlines fire."""


Event = Union[Begin, Launched, LaunchFailed, ChildExited, StopRequested, Tick, Abort, Recycle, DiskChecked]




class Decider:
    """Turns events into actions under a restart policy; `rand` supplies the backoff jitter in [0, 1)."""

    def __init__(self, policy: RestartPolicy, stop_grace_s: float,
                 rand: Callable[[], float] = random.random, disk_check_s: float = 30.0) -> None:
        self.policy = policy
        self.stop_grace_s = stop_grace_s
        self.rand = rand
        self.disk_check_s = disk_check_s

    def step(self, s: LoopState, ev: Event, now: float) -> tuple[LoopState, list[Action]]:
        phase = s.phase
        if phase.terminal:
            return s, []  # late events (a signal while exiting) change nothing
        if isinstance(ev, Tick):
            return self._tick(s, now)
        if isinstance(ev, StopRequested):
            return self._stop(s, ev, now)
        if phase is Phase.INIT and isinstance(ev, Begin):
            return self._begin(s, ev)
        if phase is Phase.STARTING and isinstance(ev, Launched):
            # STARTING -> RUNNING
            return replace(s, phase=Phase.RUNNING), [
                Record("launch", {"attempt": s.attempt, "pid": ev.pid, "argv": list(ev.argv), "resume": ev.resume}),
                Say(f"attempt {s.attempt} started (pid {ev.pid}){' with --c' if ev.resume else ''}"),
            ]
        if phase is Phase.STARTING and isinstance(ev, LaunchFailed):
            # STARTING -> FAILED
            return self._give_up(s, ev.kind, ev.reason, [ev.event] if ev.event else [])
        if phase is Phase.RUNNING and isinstance(ev, Abort):
            # RUNNING -> STOPPING, to give up once the trainer is gone
            return replace(s, phase=Phase.STOPPING, abort=ev, deadline=now + self.stop_grace_s), [
                Say(f"{ev.message}; stopping the trainer"), Terminate(self.stop_grace_s)]
        if phase is Phase.RUNNING and isinstance(ev, Recycle):
            # RUNNING -> STOPPING, to relaunch (or finish) once the trainer is gone
            # a stall is recorded the moment it is seen; the stack dump (seconds) comes after, before the kill
            diagnose: list[Action] = [DumpStacks()] if ev.kind == "stall" else []
            return replace(s, phase=Phase.STOPPING, recycle=ev, deadline=now + self.stop_grace_s), [
                Record(ev.kind, {"attempt": s.attempt, "message": ev.message, **ev.fields}),
                Say(f"attempt {s.attempt}: {ev.message}; stopping the trainer"), *diagnose,
                Terminate(self.stop_grace_s)]
        if phase is Phase.STOPPING and isinstance(ev, (Abort, Recycle)):
            return s, []
        if phase is Phase.BACKOFF and isinstance(ev, Abort):
            # BACKOFF -> FAILED: a reason to give up (a GPU fault, a divergence seen late) holds for the next
            # attempt too
            return self._give_up(s, ev.kind, ev.message)
        if phase in (Phase.STARTING, Phase.BACKOFF) and isinstance(ev, (Abort, Recycle)):
            return s, []  # about an attempt that is already gone
        if isinstance(ev, DiskChecked):
            return self._disk_checked(s, ev, now)
        if phase is Phase.RUNNING and isinstance(ev, ChildExited):
            return self._exited(s, ev, now)
        if phase is Phase.STOPPING and isinstance(ev, ChildExited) and s.recycle is not None:
            # STOPPING -> as if the attempt had ended by itself, classified as the recycle said
            kind = "finished" if ev.finished else s.recycle.kind
            ended = replace(s, phase=Phase.RUNNING, recycle=None, killed=False, deadline=None)
            return self._exited(ended, ev, now, Classification(kind, kind != "finished", s.recycle.message))
        if phase is Phase.STOPPING and isinstance(ev, ChildExited):
            return self._exited_while_stopping(s, ev)
        raise IllegalTransition(f"{type(ev).__name__} in phase {phase.value}")

    def _begin(self, s: LoopState, ev: Begin) -> tuple[LoopState, list[Action]]:
        if ev.finished:
            # INIT -> FINISHED: never relaunch a finished fold (--c would redo its validation)
            return replace(s, phase=Phase.FINISHED, exit_code=EXIT_FINISHED), [
                Record("finished", {"already": True}),
                Say("this fold is already finished (checkpoint_final.pth and validation/summary.json); nothing to do"),
                Exit(EXIT_FINISHED),
            ]
        # INIT -> STARTING
        attempt = s.attempt + 1
        return replace(s, phase=Phase.STARTING, attempt=attempt, best_epoch=ev.best_epoch), [
            Launch(attempt, ev.resume)]

    def _tick(self, s: LoopState, now: float) -> tuple[LoopState, list[Action]]:
        if s.deadline is None or now < s.deadline:
            return s, []
        if s.phase is Phase.BACKOFF and s.waiting_disk:
            return replace(s, deadline=None), [CheckDisk()]  # BACKOFF -> BACKOFF until DiskChecked says enough
        if s.phase is Phase.BACKOFF:
            return self._relaunch(s)
        if s.phase is Phase.STOPPING and s.saving:
            # STOPPING -> STOPPING: the trainer did not save in time; stop it as without cooperation
            return replace(s, saving=False, deadline=now + self.stop_grace_s), [
                Say("the trainer did not save and exit in time; sending SIGTERM"), Terminate(self.stop_grace_s)]
        if s.phase is Phase.STOPPING and not s.killed:
            # STOPPING -> STOPPING: the grace period is over
            return replace(s, killed=True, deadline=None), [
                Say(f"trainer did not exit within {self.stop_grace_s:g} s of SIGTERM; sending SIGKILL"), Kill()]
        return replace(s, deadline=None), []

    def _relaunch(self, s: LoopState) -> tuple[LoopState, list[Action]]:
        # BACKOFF -> STARTING: every relaunch resumes with --c
        attempt = s.attempt + 1
        return replace(s, phase=Phase.STARTING, attempt=attempt, restarts=s.restarts + 1, deadline=None), [
            Launch(attempt, True)]

    def _disk_checked(self, s: LoopState, ev: DiskChecked, now: float) -> tuple[LoopState, list[Action]]:
        if s.phase is not Phase.BACKOFF or not s.waiting_disk:
            return s, []
        if ev.free_bytes >= ev.needed_bytes:
            return self._relaunch(replace(s, waiting_disk=False))
        # BACKOFF -> BACKOFF: look again later; a relaunch now would fail the same way (and use up the budget)
        return replace(s, deadline=now + self.disk_check_s), []

    def _stop(self, s: LoopState, ev: StopRequested, now: float) -> tuple[LoopState, list[Action]]:
        if s.phase is Phase.STOPPING and s.abort is not None and not s.killed:
            return replace(s, stop_reason=ev.reason), []  # already stopping; the give-up stands
        record = Record("stop_requested", {"reason": ev.reason, **({"signal": ev.reason}
                                                                    if ev.reason.startswith("SIG") else {})})
        if s.phase is Phase.STOPPING and s.recycle is not None:
            # STOPPING -> STOPPING: no relaunch after all; the exit now ends in STOPPED (75)
            return replace(s, recycle=None, stop_reason=ev.reason), [
                record, Say(f"{ev.reason} received while stopping attempt {s.attempt}: it will not be relaunched")]
        if s.phase is Phase.RUNNING and ev.save_timeout_s is not None:
            # RUNNING -> STOPPING (saving): the cooperative trainer saves at its epoch end and exits 75
            return replace(s, phase=Phase.STOPPING, stop_reason=ev.reason, saving=True,
                           deadline=now + ev.save_timeout_s), [
                record, Say(f"{ev.reason} received: asking the trainer (attempt {s.attempt}) to save at the end of "
                            f"its epoch and exit (up to {ev.save_timeout_s:.0f} s)"), RequestSave()]
        if s.phase is Phase.RUNNING:
            # RUNNING -> STOPPING
            return replace(s, phase=Phase.STOPPING, stop_reason=ev.reason, deadline=now + self.stop_grace_s), [
                record, Say(f"{ev.reason} received: stopping the trainer (attempt {s.attempt}) resumably"),
                Terminate(self.stop_grace_s)]
        if s.phase is Phase.STOPPING:
            if s.killed:
                return s, []
            # STOPPING -> STOPPING: a second request does not wait for the grace period (nor for a save)
            return replace(s, killed=True, saving=False, deadline=None), [
                Say(f"{ev.reason} received again: killing the trainer now"), Kill()]
        if s.phase in (Phase.BACKOFF, Phase.INIT):
            # BACKOFF -> STOPPED: nothing is running
            return replace(s, phase=Phase.STOPPED, stop_reason=ev.reason, deadline=None, exit_code=EXIT_STOPPED), [
                record, Say(f"{ev.reason} received: stopped before the next launch; resume with the same command"),
                Exit(EXIT_STOPPED)]
        raise IllegalTransition(f"StopRequested in phase {s.phase.value}")

    def _exit_record(self, s: LoopState, ev: ChildExited, kind: str, retryable: bool,
                     summary: str) -> tuple[dict[str, Any], Record]:
        fields = {"attempt": s.attempt, "returncode": ev.returncode, "classification": kind,
                  "retryable": retryable, "summary": summary, "epochs_completed": ev.epochs_completed}
        return fields, Record("exit", fields)

    def _exited(self, s: LoopState, ev: ChildExited, now: float,
                c: Classification | None = None) -> tuple[LoopState, list[Action]]:
        c = c or classify_exit(ev.returncode, ev.log_tail, ev.finished)
        last, record = self._exit_record(s, ev, c.kind, c.retryable, c.summary)
        progressed = ev.epochs_completed > s.best_epoch
        s = replace(s, last_exit=last, best_epoch=max(s.best_epoch, ev.epochs_completed))
        head = f"attempt {s.attempt} exited: {c.summary}"
        if c.kind == "finished":
            # RUNNING -> FINISHED
            return replace(s, phase=Phase.FINISHED, exit_code=EXIT_FINISHED), [
                record, Record("finished", {"attempt": s.attempt, "epochs": s.best_epoch}),
                Say(f"{head}; epoch {s.best_epoch} reached. Done."), Exit(EXIT_FINISHED)]
        if not c.retryable:
            before: list[Action] = [record]
            if c.kind == "incompatible_checkpoint":
                before.append(Record("incompatible_checkpoint", dict(parse_state_dict_error(ev.log_tail))))
            return self._give_up(s, c.kind, f"{head} (not retryable). {c.advice}".strip(), before)
        failures = 1 if progressed else s.failures_in_row + 1
        no_progress = 0 if progressed else s.attempts_without_progress + 1
        s = replace(s, failures_in_row=failures, attempts_without_progress=no_progress)
        if no_progress >= self.policy.max_attempts_without_progress:
            return self._give_up(s, "no_progress", f"{head} (retryable), but {no_progress} attempts in a row made "
                                 f"no epoch progress (stuck at epoch {s.best_epoch}); giving up", [record])
        if s.restarts >= self.policy.max_restarts:
            return self._give_up(s, "restart_budget", f"{head} (retryable), but the restart budget "
                                 f"({self.policy.max_restarts}) is used up; giving up", [record])
        delay = self.policy.backoff(failures, self.rand())
        restart = s.restarts + 1
        # RUNNING -> BACKOFF (for a full disk: then wait for space)
        return replace(s, phase=Phase.BACKOFF, deadline=now + delay, waiting_disk=c.kind == "disk_full"), [
            Prepare(),
            record,
            Record("backoff", {"delay_s": round(delay, 3), "next_attempt": s.attempt + 1, "restart": restart,
                               "progress": progressed}),
            Say(f"{head} (retryable); epoch {ev.epochs_completed} reached; relaunching with --c in {delay:.1f} s "
                f"(restart {restart}/{self.policy.max_restarts})"),
        ]

    def _exited_while_stopping(self, s: LoopState, ev: ChildExited) -> tuple[LoopState, list[Action]]:
        finished = ev.returncode == 0 and ev.finished
        if s.abort is not None and not finished:
            # STOPPING -> FAILED: we stopped it to give up
            last, record = self._exit_record(s, ev, s.abort.kind, False, s.abort.message)
            return self._give_up(replace(s, last_exit=last), s.abort.kind, s.abort.message, [record])
        kind = "finished" if finished else "stopped"
        saved = " after saving a checkpoint" if ev.returncode == EXIT_STOPPED else ""
        last, record = self._exit_record(s, ev, kind, False, f"stopped on request ({s.stop_reason}){saved}")
        s = replace(s, last_exit=last, best_epoch=max(s.best_epoch, ev.epochs_completed), deadline=None,
                    saving=False)
        if finished:
            # STOPPING -> FINISHED: it completed before the stop took effect
            return replace(s, phase=Phase.FINISHED, exit_code=EXIT_FINISHED), [
                record, Record("finished", {"attempt": s.attempt, "epochs": s.best_epoch}),
                Say("the trainer finished while stopping. Done."), Exit(EXIT_FINISHED)]
        # STOPPING -> STOPPED
        return replace(s, phase=Phase.STOPPED, exit_code=EXIT_STOPPED), [
            record, Say(f"trainer stopped at epoch {ev.epochs_completed}; the run is resumable with the same command"),
            Exit(EXIT_STOPPED)]

    def _give_up(self, s: LoopState, reason: str, message: str,
                 before: list[Action] | None = None) -> tuple[LoopState, list[Action]]:
        # any -> FAILED
        return replace(s, phase=Phase.FAILED, deadline=None, exit_code=EXIT_GAVE_UP), [
            *(before or []), Record("give_up", {"reason": reason, "message": message}), Say(message),
            Exit(EXIT_GAVE_UP)]

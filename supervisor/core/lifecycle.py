"""The pure decision loop: step(state, event, now) -> (state, actions). No processes, no clocks, no I/O.

The lifecycle of one run, drawn once (README's copy is checked against this one by a test):

    INIT ──Begin(finished)──▶ FINISHED (0)          a finished fold is never relaunched (--c would redo validation)
    INIT ──Begin──▶ STARTING
    STARTING: Launch = prepare off the main thread (verify checkpoints, quarantine, stage, wait for GPU memory)
      ──Prepared──▶ Spawn ──Launched──▶ RUNNING
      ──LaunchFailed──▶ FAILED (1)                  no valid or compatible checkpoint, the trainer cannot start
      ──StopRequested / Abort, then Prepared──▶ STOPPED (75) / FAILED (1), nothing launched
    RUNNING ──ChildExited──▶ FINISHED (0)           finished: checkpoint_final.pth and validation/summary.json
            ──ChildExited(finished, failed)──▶ FAILED (1)  done but for what the stage set aside (named)
            ──ChildExited──▶ FAILED (1)             not retryable, restart budget spent, no progress in N attempts
            ──ChildExited──▶ BACKOFF ──deadline──▶ STARTING (--c)          retryable; Prepare starts verifying now
                after checkpoint_final.pth (the validation phase) the relaunch is --val: no epoch trained again
                with a known cause, the remedy ladder changes one thing for the next attempt (a `remedy` event),
                or gives up (FAILED) when the cause came back without progress and nothing is left to change
            ──StopRequested──▶ STOPPING ──ChildExited──▶ STOPPED (75)      grace over: Kill, stays STOPPING
                cooperative: RequestSave (SIGUSR1), the trainer saves at its epoch end and exits 75;
                at the save deadline Terminate, after the grace Kill
            ──Abort──▶ STOPPING ──ChildExited──▶ FAILED (1)  diverged, fresh start, epoch regression, GPU fault
            ──Recycle──▶ STOPPING ──ChildExited──▶ as an exit of that kind
                stall: Record, DumpStacks, then Terminate (BACKOFF); lingering after the finish: FINISHED
    STOPPING ──StopRequested──▶ STOPPING            a recycle becomes a stop (75); a second request kills at once
    BACKOFF ──StopRequested──▶ STOPPED (75)   BACKOFF ──Abort──▶ FAILED (1)
    BACKOFF (disk full) ──deadline──▶ CheckDisk ──DiskChecked(short)──▶ BACKOFF ──DiskChecked(enough)──▶ STARTING
    Every stage runs on this one drawing (supervisor/stages): the stage says what "finished" is (a fold: as above;
    preprocessing: every case verified), what progress is (epochs; cases written) and how a relaunch resumes
    (--c / --val; the cases not yet written).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Union

from supervisor.core.causes import WEIGHTS_ONLY, Cause, find_cause
from supervisor.core.classify import INCOMPLETE, NOT_FAILURES, Classification, classify_exit, parse_state_dict_error
from supervisor.core.messages import (
    Abort,
    Action,
    Begin,
    CheckDisk,
    ChildExited,
    DiskChecked,
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
    Recycle,
    RequestSave,
    Say,
    Spawn,
    StacksDumped,
    StopRequested,
    Terminate,
    Tick,
)
from supervisor.core.policy import RestartPolicy
from supervisor.core.remedies import Change, Exhausted, Ladder, Remedies
from supervisor.errors import ExitCode

# How a relaunch resumes: --c, or after checkpoint_final.pth only the final validation (--c would re-initialise the
# training and rewrite checkpoint_final.pth).
RELAUNCH = {False: "--c", True: "--val (the final validation only; no epoch trained again)"}


@dataclass(frozen=True)
class Words:
    """How the lifecycle's lines name what the stage runs and how far it got (a stage supplies its own)."""

    process: str = "trainer"
    done_already: str = ("this fold is already finished (checkpoint_final.pth and validation/summary.json); "
                         "nothing to do")
    # how far an attempt got: "epoch 12" (training), "12 cases" (preprocessing)
    progress: Callable[[int], str] = field(default=lambda n: f"epoch {n}")
    reached: str = " reached"  # after progress where an attempt ended: "epoch 4 reached", but "3 case(s) predicted"
    # how a relaunch resumes, by whether the failure came after the stage's last step (training: its final validation)
    relaunch: Callable[[bool], str] = field(default=lambda late: RELAUNCH[late])
    no_progress: str = "no epoch progress"
    finished: str = "training and validation finished"  # the summary of an exit that finished the stage
    incomplete: str = INCOMPLETE  # the summary of an exit 0 that did not finish it


TRAINING_WORDS = Words()
# Causes whose exit is not retryable as it is, but is once their remedy is in effect.
REMEDIABLE_ONLY = frozenset({WEIGHTS_ONLY})


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
    abort: Union[Abort, None] = None  # STOPPING (or STARTING) to give up rather than to pause
    recycle: Union[Recycle, None] = None  # set when STOPPING was entered to relaunch (a stall) or finish
    killed: bool = False
    saving: bool = False  # STOPPING: the trainer was asked to save and exit (cooperative mode); not yet SIGTERMed
    waiting_disk: bool = False  # BACKOFF: the last attempt ran out of disk; relaunch only once there is space
    exit_code: Union[int, None] = None
    last_exit: Union[dict[str, Any], None] = None
    remedies: Remedies = field(default_factory=Remedies)  # the ladder's changes for this run (state.json keeps them)


class Decider:
    """Turns events into actions under a restart policy; `rand` supplies the backoff jitter in [0, 1)."""

    def __init__(self, policy: RestartPolicy, stop_grace_s: float,
                 rand: Callable[[], float] = random.random, disk_check_s: float = 30.0,
                 ladder: Ladder | None = None, words: Words = TRAINING_WORDS) -> None:
        self.policy = policy
        self.words = words
        self.stop_grace_s = stop_grace_s
        self.rand = rand
        self.disk_check_s = disk_check_s
        self.ladder = ladder  # None: no remedies (a relaunch changes nothing)

    def step(self, s: LoopState, ev: Event, now: float) -> tuple[LoopState, list[Action]]:
        phase = s.phase
        if phase.terminal:
            return s, []  # late events (a signal while exiting) change nothing
        if isinstance(ev, Tick):
            return self._tick(s, now)
        if isinstance(ev, StopRequested):
            return self._stop(s, ev, now)
        if isinstance(ev, StacksDumped):
            return s, [Record("stack_dump", {"attempt": ev.attempt, "path": ev.path, "note": ev.note})]
        if phase is Phase.INIT and isinstance(ev, Begin):
            return self._begin(s, ev)
        if phase is Phase.STARTING and isinstance(ev, Prepared):
            return self._prepared(s, ev)
        if phase is Phase.STARTING and isinstance(ev, Launched):
            # STARTING -> RUNNING
            how = " with --val (the final validation only)" if ev.validate else " with --c" if ev.resume else ""
            return replace(s, phase=Phase.RUNNING), [
                Record("launch", {"attempt": s.attempt, "pid": ev.pid, "argv": list(ev.argv), "resume": ev.resume,
                                  **({"validate": True} if ev.validate else {}), "sized": dict(ev.sized)}),
                Say(f"attempt {s.attempt} started (pid {ev.pid}){how}"),
            ]
        if phase is Phase.STARTING and isinstance(ev, LaunchFailed):
            # STARTING -> FAILED
            return self._give_up(s, ev.kind, ev.reason, [ev.event] if ev.event else [])
        if phase is Phase.RUNNING and isinstance(ev, Abort):
            # RUNNING -> STOPPING, to give up once the trainer is gone
            return replace(s, phase=Phase.STOPPING, abort=ev, deadline=now + self.stop_grace_s), [
                Say(f"{ev.message}; stopping the {self.words.process}"), Terminate(self.stop_grace_s)]
        if phase is Phase.RUNNING and isinstance(ev, Recycle):
            # RUNNING -> STOPPING, to relaunch (or finish) once the trainer is gone
            # a stall is recorded the moment it is seen; the stack dump (seconds) comes after, before the kill
            diagnose: list[Action] = [DumpStacks()] if ev.kind == "stall" else []
            return replace(s, phase=Phase.STOPPING, recycle=ev, deadline=now + self.stop_grace_s), [
                Record(ev.kind, {"attempt": s.attempt, "message": ev.message, **ev.fields}),
                Say(f"attempt {s.attempt}: {ev.message}; stopping the {self.words.process}"), *diagnose,
                Terminate(self.stop_grace_s)]
        if phase is Phase.STOPPING and isinstance(ev, (Abort, Recycle)):
            return s, []
        if phase is Phase.STARTING and isinstance(ev, Abort):
            # STARTING -> STARTING: the attempt is being prepared; it will not be launched (a GPU fault holds for it)
            return replace(s, abort=ev), [Say(f"{ev.message}; not launching attempt {s.attempt}")]
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
            return replace(s, phase=Phase.FINISHED, exit_code=ExitCode.FINISHED), [
                Record("finished", {"already": True}),
                Say(self.words.done_already),
                Exit(ExitCode.FINISHED),
            ]
        # INIT -> STARTING
        attempt = s.attempt + 1
        return replace(s, phase=Phase.STARTING, attempt=attempt, best_epoch=ev.best_epoch), [
            Launch(attempt, ev.resume, s.remedies.env)]

    def _prepared(self, s: LoopState, ev: Prepared) -> tuple[LoopState, list[Action]]:
        if s.abort is not None:
            # STARTING -> FAILED: a reason to give up arrived while the attempt was being prepared
            return self._give_up(s, s.abort.kind, s.abort.message)
        if s.stop_reason is not None:
            # STARTING -> STOPPED: a stop arrived while the attempt was being prepared; nothing was launched
            return replace(s, phase=Phase.STOPPED, exit_code=ExitCode.STOPPED), [
                Say(f"{s.stop_reason} received: stopped before the launch; resume with the same command"),
                Exit(ExitCode.STOPPED)]
        # STARTING -> STARTING: start the trainer (Launched or LaunchFailed follows at once)
        return s, [Spawn(s.attempt, ev.resume, ev.pretrained, s.remedies.env, ev.validate)]

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
                Say(f"{self.words.process} did not exit within {self.stop_grace_s:g} s of SIGTERM; sending SIGKILL"),
                Kill()]
        return replace(s, deadline=None), []

    def _relaunch(self, s: LoopState) -> tuple[LoopState, list[Action]]:
        # BACKOFF -> STARTING: every relaunch resumes with --c
        attempt = s.attempt + 1
        return replace(s, phase=Phase.STARTING, attempt=attempt, restarts=s.restarts + 1, deadline=None), [
            Launch(attempt, True, s.remedies.env)]

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
            # RUNNING -> STOPPING (saving): the cooperative trainer saves (after its step in flight, or at its epoch
            # end) and exits 75
            return replace(s, phase=Phase.STOPPING, stop_reason=ev.reason, saving=True,
                           deadline=now + ev.save_timeout_s), [
                record, Say(f"{ev.reason} received: asking the trainer (attempt {s.attempt}) to save and exit (up to "
                            f"{ev.save_timeout_s:.0f} s; its attempt log says where it saves)"), RequestSave()]
        if s.phase is Phase.RUNNING:
            # RUNNING -> STOPPING
            return replace(s, phase=Phase.STOPPING, stop_reason=ev.reason, deadline=now + self.stop_grace_s), [
                record, Say(f"{ev.reason} received: stopping the {self.words.process} (attempt {s.attempt}) resumably"),
                Terminate(self.stop_grace_s)]
        if s.phase is Phase.STOPPING:
            if s.killed:
                return s, []
            # STOPPING -> STOPPING: a second request does not wait for the grace period (nor for a save)
            return replace(s, killed=True, saving=False, deadline=None), [
                Say(f"{ev.reason} received again: killing the {self.words.process} now"), Kill()]
        if s.phase is Phase.STARTING:
            if s.stop_reason is not None:
                return s, []
            # STARTING -> STARTING: let the preparation finish (its file moves are atomic), then stop (75)
            return replace(s, stop_reason=ev.reason), [
                record, Say(f"{ev.reason} received: stopping once attempt {s.attempt}'s preparation is done")]
        if s.phase in (Phase.BACKOFF, Phase.INIT):
            # BACKOFF -> STOPPED: nothing is running
            return replace(s, phase=Phase.STOPPED, stop_reason=ev.reason, deadline=None, exit_code=ExitCode.STOPPED), [
                record, Say(f"{ev.reason} received: stopped before the next launch; resume with the same command"),
                Exit(ExitCode.STOPPED)]
        raise IllegalTransition(f"StopRequested in phase {s.phase.value}")

    def _exit_record(self, s: LoopState, ev: ChildExited, kind: str, retryable: bool,
                     summary: str, cause: Cause | None = None) -> tuple[dict[str, Any], Record]:
        fields: dict[str, Any] = {"attempt": s.attempt, "returncode": ev.returncode, "classification": kind,
                                  "retryable": retryable, "summary": summary, "epochs_completed": ev.epochs_completed,
                                  "phase": ev.phase}
        if cause is not None:
            fields.update(cause=cause.name, cause_summary=cause.summary, evidence=cause.evidence)
        return fields, Record("exit", fields)

    def _remedy(self, s: LoopState, cause: Cause | None, progressed: bool, head: str,
                phase: str) -> tuple[LoopState, list[Action], str | None]:
        """The ladder's answer to a retryable failure: (state with the change, its record and line, a reason to give
        up instead of relaunching)."""
        if cause is None or self.ladder is None:
            return s, [], None
        outcome = self.ladder.next(cause.name, s.remedies, s.attempt + 1, s.best_epoch, progressed, phase)
        if isinstance(outcome, Exhausted):
            return s, [], f"{head}. {outcome.message}"
        if isinstance(outcome, Change):
            a = outcome.applied
            return replace(s, remedies=s.remedies.with_change(a)), [
                Record("remedy", {**a.document(), "message": outcome.message}),
                Say(f"remedy for {cause.name}, from attempt {a.attempt} on: {outcome.message}")], None
        return s, [Say(f"{cause.name}: relaunching unchanged ({outcome.message})")], None

    def _exited(self, s: LoopState, ev: ChildExited, now: float,
                c: Classification | None = None) -> tuple[LoopState, list[Action]]:
        c = c or classify_exit(ev.returncode, ev.log_tail, ev.finished)
        if c.kind == "finished":
            c = replace(c, summary=self.words.finished)
        elif c.kind == "exited_without_final":
            c = replace(c, summary=c.summary.replace(INCOMPLETE, self.words.incomplete))
        elif self.words.process != "trainer":  # the classifier's rules speak of nnU-Net's trainer
            c = replace(c, summary=c.summary.replace("the trainer ", f"the {self.words.process} "))
        cause = None if c.kind in NOT_FAILURES else find_cause(c.kind, ev.returncode, ev.evidence)
        last, record = self._exit_record(s, ev, c.kind, c.retryable, c.summary, cause)
        progressed = ev.epochs_completed > s.best_epoch
        s = replace(s, last_exit=last, best_epoch=max(s.best_epoch, ev.epochs_completed))
        head = f"attempt {s.attempt} exited: {c.summary}" + (f" [{cause.summary}]" if cause else "")
        if c.kind == "finished" and ev.failed:
            # RUNNING -> FAILED: everything else is done; what was set aside is named (a prediction's failed cases)
            return self._give_up(s, "cases_failed", f"{head}, except {len(ev.failed)} set aside after failing on "
                                 f"their own: {', '.join(ev.failed)} (events case_failed say why)", [record])
        if c.kind == "finished":
            # RUNNING -> FINISHED
            kept = dict(s.remedies.env)
            worked = ([Say("the remedies in effect when it finished: "
                           + ", ".join(f"{k}={v}" for k, v in kept.items())
                           + "; set them in nnunet.env for the next runs on this machine")] if kept else [])
            return replace(s, phase=Phase.FINISHED, exit_code=ExitCode.FINISHED), [
                record, Record("finished", {"attempt": s.attempt, "epochs": s.best_epoch,
                                            **({"remedies": kept} if kept else {})}),
                *worked, Say(f"{head}; {self.words.progress(s.best_epoch)}{self.words.reached}. Done."),
                Exit(ExitCode.FINISHED)]
        if not c.retryable and not self._remediable(s, cause):
            before: list[Action] = [record]
            if c.kind == "incompatible_checkpoint":
                before.append(Record("incompatible_checkpoint", dict(parse_state_dict_error(ev.log_tail))))
            return self._give_up(s, c.kind, f"{head} (not retryable). {c.advice}".strip(), before)
        failures = 1 if progressed else s.failures_in_row + 1
        no_progress = 0 if progressed else s.attempts_without_progress + 1
        s = replace(s, failures_in_row=failures, attempts_without_progress=no_progress)
        tried = f" (remedies so far: {s.remedies.story()})" if s.remedies.history else ""
        s, remedied, exhausted = self._remedy(s, cause, progressed, head, ev.phase)
        if exhausted is not None:
            return self._give_up(s, "remedies_exhausted", exhausted, [record])
        if no_progress >= self.policy.max_attempts_without_progress:
            return self._give_up(s, "no_progress", f"{head} (retryable), but {no_progress} attempts in a row made "
                                 f"{self.words.no_progress} (stuck at {self.words.progress(s.best_epoch)}){tried}; "
                                 "giving up", [record])
        if s.restarts >= self.policy.max_restarts:
            return self._give_up(s, "restart_budget", f"{head} (retryable), but the restart budget "
                                 f"({self.policy.max_restarts}) is used up{tried}; giving up", [record])
        delay = self.policy.backoff(failures, self.rand())
        restart = s.restarts + 1
        # RUNNING -> BACKOFF (for a full disk: then wait for space)
        return replace(s, phase=Phase.BACKOFF, deadline=now + delay, waiting_disk=c.kind == "disk_full"), [
            Prepare(),
            record,
            *remedied,
            Record("backoff", {"delay_s": round(delay, 3), "next_attempt": s.attempt + 1, "restart": restart,
                               "progress": progressed}),
            Say(f"{head} ({'retryable' if c.retryable else 'remediable'}); "
                f"{self.words.progress(ev.epochs_completed)}{self.words.reached}; "
                f"relaunching with {self.words.relaunch(ev.phase == 'validation')} in {delay:.1f} s "
                f"(restart {restart}/{self.policy.max_restarts})"),
        ]

    def _remediable(self, s: LoopState, cause: Cause | None) -> bool:
        """A failure a plain relaunch cannot help that one known change can: the trainer's torch.load refusing a
        checkpoint our verification passed. Only while the change is still to be made (then it is not retried)."""
        if cause is None or cause.name not in REMEDIABLE_ONLY or self.ladder is None:
            return False
        return isinstance(self.ladder.next(cause.name, s.remedies, s.attempt + 1, s.best_epoch, False), Change)

    def _exited_while_stopping(self, s: LoopState, ev: ChildExited) -> tuple[LoopState, list[Action]]:
        finished = ev.returncode == 0 and ev.finished
        if s.abort is not None and not finished:
            # STOPPING -> FAILED: we stopped it to give up
            last, record = self._exit_record(s, ev, s.abort.kind, False, s.abort.message)
            return self._give_up(replace(s, last_exit=last), s.abort.kind, s.abort.message, [record])
        kind = "finished" if finished else "stopped"
        saved = " after saving a checkpoint" if ev.returncode == ExitCode.STOPPED else ""
        last, record = self._exit_record(s, ev, kind, False, f"stopped on request ({s.stop_reason}){saved}")
        s = replace(s, last_exit=last, best_epoch=max(s.best_epoch, ev.epochs_completed), deadline=None,
                    saving=False)
        if finished:
            # STOPPING -> FINISHED: it completed before the stop took effect
            return replace(s, phase=Phase.FINISHED, exit_code=ExitCode.FINISHED), [
                record, Record("finished", {"attempt": s.attempt, "epochs": s.best_epoch}),
                Say(f"the {self.words.process} finished while stopping. Done."), Exit(ExitCode.FINISHED)]
        # STOPPING -> STOPPED
        return replace(s, phase=Phase.STOPPED, exit_code=ExitCode.STOPPED), [
            record, Say(f"{self.words.process} stopped at {self.words.progress(ev.epochs_completed)}; the run is "
                        "resumable with the same command"),
            Exit(ExitCode.STOPPED)]

    def _give_up(self, s: LoopState, reason: str, message: str,
                 before: list[Action] | None = None) -> tuple[LoopState, list[Action]]:
        # any -> FAILED
        return replace(s, phase=Phase.FAILED, deadline=None, exit_code=ExitCode.GAVE_UP), [
            *(before or []), Record("give_up", {"reason": reason, "message": message}), Say(message),
            Exit(ExitCode.GAVE_UP)]

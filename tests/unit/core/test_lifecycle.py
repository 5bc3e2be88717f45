"""The decision loop, driven with scripted events and a fake clock: no processes, no sleeping."""

from __future__ import annotations

import pytest

from supervisor.core.lifecycle import Decider, IllegalTransition, LoopState, Phase
from supervisor.core.messages import (
    Begin,
    CheckDisk,
    ChildExited,
    DiskChecked,
    Exit,
    Kill,
    Launch,
    Launched,
    LaunchFailed,
    Record,
    Recycle,
    RequestSave,
    Say,
    StopRequested,
    Terminate,
    Tick,
)
from supervisor.core.policy import RestartPolicy

SIGKILL_EXIT = dict(returncode=-9, log_tail="", finished=False)


def decider(**policy: float) -> Decider:
    return Decider(RestartPolicy(**policy), stop_grace_s=30, rand=lambda: 0.0)  # type: ignore[arg-type]


def records(actions: list[object], name: str) -> list[dict[str, object]]:
    return [a.fields for a in actions if isinstance(a, Record) and a.event == name]


def started(d: Decider, now: float = 0.0, resume: bool = False, epoch: int = 0) -> LoopState:
    s, actions = d.step(LoopState(), Begin(finished=False, resume=resume, best_epoch=epoch), now)
    assert actions == [Launch(1, resume)]
    s, _ = d.step(s, Launched(100, ("nnUNetv2_train",), resume), now)
    assert s.phase is Phase.RUNNING
    return s


def crash_and_relaunch(d: Decider, s: LoopState, now: float, epochs: int) -> tuple[LoopState, float, list[object]]:
    """One retryable crash; returns the state after relaunch, the backoff delay, and the crash actions."""
    s, actions = d.step(s, ChildExited(epochs_completed=epochs, **SIGKILL_EXIT), now)  # type: ignore[arg-type]
    assert s.phase is Phase.BACKOFF
    delay = records(actions, "backoff")[0]["delay_s"]
    assert isinstance(delay, float)
    s, early = d.step(s, Tick(), now + delay - 0.01)
    assert early == [] and s.phase is Phase.BACKOFF
    s, actions2 = d.step(s, Tick(), now + delay)
    assert actions2 == [Launch(s.attempt, True)]
    s, _ = d.step(s, Launched(100 + s.attempt, ("x", "--c"), True), now + delay)
    return s, delay, actions


def test_first_launch_resumes_only_when_a_checkpoint_exists() -> None:
    d = decider()
    assert d.step(LoopState(), Begin(False, resume=False), 0)[1] == [Launch(1, False)]
    assert d.step(LoopState(), Begin(False, resume=True), 0)[1] == [Launch(1, True)]


def test_attempt_numbers_continue_from_a_previous_supervisor() -> None:
    s, actions = decider().step(LoopState(attempt=4), Begin(False, resume=True), 0)
    assert actions == [Launch(5, True)] and s.attempt == 5


def test_finished_fold_is_never_relaunched() -> None:
    s, actions = decider().step(LoopState(), Begin(finished=True, resume=True), 0)
    assert s.phase is Phase.FINISHED
    assert actions[-1] == Exit(0)
    assert not any(isinstance(a, Launch) for a in actions)


def test_exact_backoff_sequence_without_progress_doubles_and_caps() -> None:
    d = decider(backoff_initial_s=10, backoff_max_s=35, max_restarts=10, max_attempts_without_progress=10)
    s = started(d)
    now, delays = 0.0, []
    for _ in range(5):
        s, delay, _ = crash_and_relaunch(d, s, now, epochs=0)
        delays.append(delay)
        now += delay
    assert delays == [10.0, 20.0, 35.0, 35.0, 35.0]


def test_progress_resets_the_backoff() -> None:
    d = decider(backoff_initial_s=10, backoff_max_s=600, max_attempts_without_progress=10)
    s = started(d)
    s, d1, _ = crash_and_relaunch(d, s, 0, epochs=0)
    s, d2, _ = crash_and_relaunch(d, s, 100, epochs=0)
    s, d3, actions = crash_and_relaunch(d, s, 200, epochs=7)  # this attempt reached new ground
    assert (d1, d2, d3) == (10.0, 20.0, 10.0)
    assert records(actions, "backoff")[0]["progress"] is True


def test_redoing_the_same_epochs_is_not_progress() -> None:
    d = decider(max_attempts_without_progress=3)
    s = started(d)
    s, _, _ = crash_and_relaunch(d, s, 0, epochs=30)  # new ground: epoch 30
    s, _, _ = crash_and_relaunch(d, s, 100, epochs=30)  # resumed from an older checkpoint, died at 30 again
    s, _, _ = crash_and_relaunch(d, s, 200, epochs=25)
    s, actions = d.step(s, ChildExited(epochs_completed=30, **SIGKILL_EXIT), 300)  # type: ignore[arg-type]
    assert s.phase is Phase.FAILED
    assert records(actions, "give_up")[0]["reason"] == "no_progress"
    assert actions[-1] == Exit(1)


def test_restart_budget_is_enforced() -> None:
    d = decider(max_restarts=2, max_attempts_without_progress=100)
    s = started(d)
    s, _, _ = crash_and_relaunch(d, s, 0, epochs=1)
    s, _, _ = crash_and_relaunch(d, s, 100, epochs=2)
    assert s.restarts == 2
    s, actions = d.step(s, ChildExited(epochs_completed=3, **SIGKILL_EXIT), 200)  # type: ignore[arg-type]
    assert s.phase is Phase.FAILED
    assert records(actions, "give_up")[0]["reason"] == "restart_budget"
    assert records(actions, "exit")[0]["classification"] == "killed_by_signal"


def test_zero_restarts_gives_up_on_the_first_failure() -> None:
    d = decider(max_restarts=0)
    s = started(d)
    s, actions = d.step(s, ChildExited(epochs_completed=3, **SIGKILL_EXIT), 5)  # type: ignore[arg-type]
    assert actions[-1] == Exit(1)


def test_non_retryable_failure_stops_at_once_with_advice() -> None:
    d = decider()
    s = started(d)
    tail = "Traceback (most recent call last):\nRuntimeError: Error(s) in loading state_dict for PlainConvUNet:\n"
    s, actions = d.step(s, ChildExited(1, tail, False, 4), 5)
    assert s.phase is Phase.FAILED and actions[-1] == Exit(1)
    exit_rec = records(actions, "exit")[0]
    assert exit_rec["classification"] == "incompatible_checkpoint" and exit_rec["retryable"] is False
    message = next(a.message for a in actions if isinstance(a, Say))
    assert "not retryable" in message and "-pretrained_weights" in message


def test_finished_exit() -> None:
    d = decider()
    s = started(d)
    s, actions = d.step(s, ChildExited(0, "", True, 10), 5)
    assert s.phase is Phase.FINISHED
    assert records(actions, "finished") and actions[-1] == Exit(0)


def test_exit_zero_without_final_checkpoint_is_retried() -> None:
    d = decider()
    s = started(d)
    s, actions = d.step(s, ChildExited(0, "", False, 3), 5)
    assert s.phase is Phase.BACKOFF
    assert records(actions, "exit")[0]["classification"] == "exited_without_final"


def test_readable_decision_line() -> None:
    d = decider(backoff_initial_s=10)
    s = started(d)
    _, actions = d.step(s, ChildExited(epochs_completed=4, **SIGKILL_EXIT), 5)  # type: ignore[arg-type]
    line = next(a.message for a in actions if isinstance(a, Say))
    assert line.startswith("attempt 1 exited: killed by SIGKILL")
    assert "(retryable); epoch 4 reached; relaunching with --c in 10.0 s (restart 1/10)" in line


def test_jitter_stays_within_ten_percent_and_under_the_cap() -> None:
    d = Decider(RestartPolicy(backoff_initial_s=10, backoff_max_s=15), 30, rand=lambda: 0.999)
    s = started(d)
    _, actions = d.step(s, ChildExited(epochs_completed=1, **SIGKILL_EXIT), 0)  # type: ignore[arg-type]
    assert 10.0 < records(actions, "backoff")[0]["delay_s"] <= 11.0  # type: ignore[operator]
    assert RestartPolicy(backoff_initial_s=10, backoff_max_s=15).backoff(2, 0.999) == 15.0


def test_stop_while_running_terminates_then_kills_after_grace_then_exits_75() -> None:
    d = decider()
    s = started(d)
    s, actions = d.step(s, StopRequested("SIGTERM"), 10)
    assert s.phase is Phase.STOPPING
    assert Terminate(30) in actions
    assert records(actions, "stop_requested") == [{"reason": "SIGTERM", "signal": "SIGTERM"}]
    s, actions = d.step(s, Tick(), 39.9)
    assert actions == []
    s, actions = d.step(s, Tick(), 40)
    assert Kill() in actions
    s, actions = d.step(s, ChildExited(-9, "", False, 3), 41)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)
    assert records(actions, "exit")[0]["classification"] == "stopped"


def test_second_stop_request_kills_at_once() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, StopRequested("SIGINT"), 0)
    s, actions = d.step(s, StopRequested("SIGINT"), 1)
    assert Kill() in actions
    s, actions = d.step(s, StopRequested("SIGINT"), 2)
    assert actions == []


def test_stop_during_backoff_exits_75_without_launching() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, ChildExited(epochs_completed=1, **SIGKILL_EXIT), 0)  # type: ignore[arg-type]
    s, actions = d.step(s, StopRequested("SIGUSR1"), 1)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)
    assert not any(isinstance(a, Launch) for a in actions)


def test_trainer_finishing_while_stopping_counts_as_finished() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, StopRequested("SIGTERM"), 0)
    s, actions = d.step(s, ChildExited(0, "", True, 10), 1)
    assert s.phase is Phase.FINISHED and actions[-1] == Exit(0)


def test_launch_failure_gives_up() -> None:
    d = decider()
    s, _ = d.step(LoopState(), Begin(False, False), 0)
    s, actions = d.step(s, LaunchFailed("No such file"), 0)
    assert s.phase is Phase.FAILED and actions[-1] == Exit(1)
    assert records(actions, "give_up")[0]["reason"] == "launch_failed"


def test_illegal_transitions_raise() -> None:
    d = decider()
    with pytest.raises(IllegalTransition):
        d.step(LoopState(), ChildExited(0, "", False, 0), 0)
    s = started(d)
    with pytest.raises(IllegalTransition):
        d.step(s, Begin(False, False), 0)


def test_terminal_state_ignores_late_events() -> None:
    d = decider()
    s, _ = d.step(LoopState(), Begin(finished=True, resume=False), 0)
    assert d.step(s, StopRequested("SIGTERM"), 1) == (s, [])


def test_a_stall_stops_the_tree_and_relaunches_under_the_backoff() -> None:
    d = decider(backoff_initial_s=10)
    s = started(d, epoch=4)
    s, actions = d.step(s, Recycle("stall", "no progress for 40 s", {"dump": "stall-1.txt"}), 100.0)
    assert s.phase is Phase.STOPPING and Terminate(30) in actions
    assert records(actions, "stall") == [{"attempt": 1, "message": "no progress for 40 s", "dump": "stall-1.txt"}]
    # recorded when seen, then the stacks are dumped, then the tree is stopped
    kinds = [type(a).__name__ for a in actions]
    assert kinds.index("Record") < kinds.index("DumpStacks") < kinds.index("Terminate")
    s, none = d.step(s, Tick(), 129.0)
    assert none == []
    s, actions = d.step(s, Tick(), 130.0)  # a SIGSTOPped tree ignores SIGTERM: the grace ends in SIGKILL
    assert actions[-1] == Kill()
    s, actions = d.step(s, ChildExited(-9, "", False, 6), 131.0)
    assert s.phase is Phase.BACKOFF and not s.killed and s.recycle is None
    assert records(actions, "exit")[0]["classification"] == "stall"
    assert records(actions, "exit")[0]["retryable"] is True
    assert records(actions, "backoff")[0]["progress"] is True  # epochs 4 -> 6 before it hung: backoff resets
    s, actions = d.step(s, Tick(), 131.0 + 10.0)
    assert actions == [Launch(2, True)]


def test_repeated_stalls_without_progress_give_up() -> None:
    d = decider(max_attempts_without_progress=2, backoff_initial_s=0)
    s = started(d, epoch=4)
    for attempt, now in ((1, 10.0), (2, 20.0)):
        s, _ = d.step(s, Recycle("stall", "hung"), now)
        s, actions = d.step(s, ChildExited(-15, "", False, 4), now + 1)
        if attempt == 1:
            s, _ = d.step(s, Tick(), now + 1)
            s, _ = d.step(s, Launched(200, ("x", "--c"), True), now + 1)
    assert s.phase is Phase.FAILED and records(actions, "give_up")[0]["reason"] == "no_progress"


def test_a_finished_trainer_that_lingers_is_stopped_and_the_run_is_finished() -> None:
    d = decider()
    s = started(d)
    s, actions = d.step(s, Recycle("lingering", "finished 120 s ago but still running"), 50.0)
    assert Terminate(30) in actions
    s, actions = d.step(s, ChildExited(-15, "", True, 10), 51.0)
    assert s.phase is Phase.FINISHED and actions[-1] == Exit(0)
    assert records(actions, "finished") == [{"attempt": 1, "epochs": 10}]


def test_a_stop_request_while_recycling_ends_resumably_without_a_relaunch() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, Recycle("stall", "hung"), 10.0)
    s, actions = d.step(s, StopRequested("SIGTERM"), 11.0)
    assert records(actions, "stop_requested") == [{"reason": "SIGTERM", "signal": "SIGTERM"}]
    assert not any(isinstance(a, Kill) for a in actions)  # the first request keeps the grace period
    s, actions = d.step(s, ChildExited(-15, "", False, 3), 12.0)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)


def test_late_recycle_or_abort_about_a_gone_attempt_changes_nothing() -> None:
    d = decider(backoff_initial_s=10)
    s = started(d)
    s, _ = d.step(s, ChildExited(1, "", False, 1), 5.0)
    assert s.phase is Phase.BACKOFF
    assert d.step(s, Recycle("stall", "late"), 6.0) == (s, [])


def test_a_reason_to_give_up_that_arrives_during_the_backoff_ends_the_run() -> None:
    from supervisor.core.messages import Abort

    d = decider(backoff_initial_s=10)
    s = started(d)
    s, _ = d.step(s, ChildExited(1, "", False, 1), 5.0)
    s, actions = d.step(s, Abort("gpu_fault", "GPU 0 fell off the bus"), 6.0)
    assert s.phase is Phase.FAILED and actions[-1] == Exit(1)
    assert records(actions, "give_up") == [{"reason": "gpu_fault", "message": "GPU 0 fell off the bus"}]


# ---- cooperative stop and a full disk ----

def test_a_cooperative_stop_asks_for_a_save_and_waits_for_exit_75() -> None:
    d = decider()
    s = started(d, epoch=3)
    s, actions = d.step(s, StopRequested("SIGUSR1", save_timeout_s=200), 10.0)
    assert s.phase is Phase.STOPPING and s.saving and RequestSave() in actions
    assert not any(isinstance(a, (Terminate, Kill)) for a in actions)  # no SIGTERM while it saves
    assert records(actions, "stop_requested") == [{"reason": "SIGUSR1", "signal": "SIGUSR1"}]
    s, none = d.step(s, Tick(), 209.0)
    assert none == []
    s, actions = d.step(s, ChildExited(75, "", False, 5), 100.0)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)
    assert "after saving a checkpoint" in records(actions, "exit")[0]["summary"]  # type: ignore[operator]


def test_a_trainer_that_does_not_save_in_time_gets_sigterm_then_sigkill() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, StopRequested("SIGTERM", save_timeout_s=200), 0.0)
    s, actions = d.step(s, Tick(), 200.0)
    assert Terminate(30) in actions and not s.saving
    s, actions = d.step(s, Tick(), 230.0)
    assert actions[-1] == Kill()
    s, actions = d.step(s, ChildExited(-9, "", False, 0), 231.0)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)


def test_a_second_request_while_saving_kills_at_once() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, StopRequested("SIGINT", save_timeout_s=200), 0.0)
    s, actions = d.step(s, StopRequested("SIGINT", save_timeout_s=200), 1.0)
    assert actions[-1] == Kill() and not s.saving


def test_a_full_disk_waits_for_space_before_relaunching() -> None:
    d = decider(backoff_initial_s=10)
    s = started(d, epoch=2)
    tail = "nnunet-supervise: disk full: saving checkpoint_latest.pth failed: [Errno 28] No space left on device"
    s, actions = d.step(s, ChildExited(74, tail, False, 3), 50.0)
    assert records(actions, "exit")[0]["classification"] == "disk_full"
    assert s.phase is Phase.BACKOFF and s.waiting_disk
    s, actions = d.step(s, Tick(), 60.0)
    assert actions == [CheckDisk()]
    s, actions = d.step(s, DiskChecked(free_bytes=10, needed_bytes=100), 60.0)
    assert actions == [] and s.phase is Phase.BACKOFF and s.deadline == 90.0  # looks again in 30 s
    for now in (70.0, 80.0):
        s, actions = d.step(s, Tick(), now)
        assert actions == []  # no relaunch, no budget used while the disk is full
    s, actions = d.step(s, Tick(), 90.0)
    assert actions == [CheckDisk()]
    s, actions = d.step(s, DiskChecked(free_bytes=500, needed_bytes=100), 90.0)
    assert actions == [Launch(2, True)] and not s.waiting_disk and s.restarts == 1


def test_a_stop_while_waiting_for_disk_exits_resumable() -> None:
    d = decider()
    s = started(d)
    s, _ = d.step(s, ChildExited(74, "nnunet-supervise: disk full", False, 0), 0.0)
    s, actions = d.step(s, StopRequested("SIGTERM"), 1.0)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)


# ---- preparing a launch off the main thread ----

def test_a_prepared_attempt_is_spawned_with_what_the_preparation_decided() -> None:
    from supervisor.core.messages import Prepared, Spawn

    d = decider()
    s, _ = d.step(LoopState(), Begin(False, resume=True), 0)
    s, actions = d.step(s, Prepared(resume=True), 1.0)
    assert actions == [Spawn(1, True, None)] and s.phase is Phase.STARTING
    s, actions = d.step(s, Prepared(resume=False, pretrained="/w.pth"), 1.0)
    assert actions == [Spawn(1, False, "/w.pth")]


def test_a_stop_while_the_launch_is_prepared_waits_for_it_then_exits_75_without_launching() -> None:
    from supervisor.core.messages import Prepared

    d = decider()
    s, _ = d.step(LoopState(), Begin(False, resume=True), 0)
    s, actions = d.step(s, StopRequested("SIGTERM"), 1.0)
    assert s.phase is Phase.STARTING and s.stop_reason == "SIGTERM"
    assert records(actions, "stop_requested") == [{"reason": "SIGTERM", "signal": "SIGTERM"}]
    assert not any(isinstance(a, (Exit, Kill, Terminate)) for a in actions)  # the file moves finish first
    s, again = d.step(s, StopRequested("SIGINT"), 1.5)
    assert again == []
    s, actions = d.step(s, Prepared(resume=True), 2.0)
    assert s.phase is Phase.STOPPED and actions[-1] == Exit(75)
    assert not any(type(a).__name__ == "Spawn" for a in actions)


def test_a_gpu_fault_while_the_launch_is_prepared_gives_up_without_launching() -> None:
    from supervisor.core.messages import Abort, Prepared

    d = decider()
    s, _ = d.step(LoopState(), Begin(False, resume=False), 0)
    s, actions = d.step(s, Abort("gpu_fault", "GPU 0 fell off the bus"), 1.0)
    assert s.phase is Phase.STARTING and not any(isinstance(a, Exit) for a in actions)
    s, actions = d.step(s, Prepared(resume=False), 2.0)
    assert s.phase is Phase.FAILED and actions[-1] == Exit(1)
    assert records(actions, "give_up") == [{"reason": "gpu_fault", "message": "GPU 0 fell off the bus"}]


def test_a_failed_preparation_gives_up_with_its_record() -> None:
    d = decider()
    s, _ = d.step(LoopState(), Begin(False, resume=True), 0)
    incompatible = Record("incompatible_checkpoint", {"missing_keys": ["a"]})
    s, actions = d.step(s, LaunchFailed("does not fit", "incompatible_checkpoint", incompatible), 1.0)
    assert s.phase is Phase.FAILED and incompatible in actions
    assert records(actions, "give_up")[0]["reason"] == "incompatible_checkpoint"


def test_a_stack_dump_is_recorded_whenever_it_comes_back() -> None:
    from supervisor.core.messages import StacksDumped

    d = decider()
    s = started(d)
    s, actions = d.step(s, Recycle("stall", "hung"), 10.0)
    s, actions = d.step(s, StacksDumped(1, "/run/stall-1.txt", "stack dump of 2/2 process(es)"), 11.5)
    assert actions == [Record("stack_dump", {"attempt": 1, "path": "/run/stall-1.txt",
                                             "note": "stack dump of 2/2 process(es)"})]
    assert s.phase is Phase.STOPPING

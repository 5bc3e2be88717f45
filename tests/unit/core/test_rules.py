"""The small pure rules the runner applies to what its sensors saw: no process, no clock."""

from __future__ import annotations

from supervisor.core.lifecycle import LoopState
from supervisor.core.messages import Abort, Record, Recycle
from supervisor.core.rules import DiskWatch, Every, alarm_event, carried_over, resume_check, save_timeout_s


def test_a_divergence_gives_up_and_a_stall_or_a_lingering_finish_is_recycled() -> None:
    assert alarm_event("diverged", "nan for 3 epochs") == Abort("diverged", "nan for 3 epochs")
    assert alarm_event("stall", "silent", {"dump": "d"}) == Recycle("stall", "silent", {"dump": "d"})
    assert alarm_event("lingering", "finished but running") == Recycle("lingering", "finished but running", {})


def test_a_resume_is_unsettled_until_an_epoch_starts() -> None:
    assert resume_check(2, 5, saw_no_checkpoint=False, first_epochs=[]) == (False, None)


def test_a_resume_at_or_after_the_verified_epoch_is_fine() -> None:
    assert resume_check(2, 5, saw_no_checkpoint=False, first_epochs=[5]) == (True, None)
    assert resume_check(2, 5, saw_no_checkpoint=False, first_epochs=[6, 5]) == (True, None)


def test_a_resume_below_the_verified_epoch_gives_up() -> None:
    settled, abort = resume_check(3, 5, saw_no_checkpoint=False, first_epochs=[2])
    assert settled and abort is not None and abort.kind == "epoch_regression"
    assert "attempt 3 resumed at epoch 2, below the verified checkpoint's epoch 5" in abort.message


def test_a_c_that_found_no_checkpoint_gives_up_even_before_an_epoch() -> None:
    settled, abort = resume_check(2, 7, saw_no_checkpoint=True, first_epochs=[])
    assert settled and abort is not None and abort.kind == "fresh_start_detected"
    assert "resume epoch 7" in abort.message


def test_the_cooperative_save_timeout_is_configured_or_two_epochs_and_a_minute() -> None:
    assert save_timeout_s(45.0, [100.0]) == 45.0
    assert save_timeout_s("auto", [10.0, 30.0, 20.0]) == 120.0
    assert save_timeout_s("auto", []) == 600.0


def test_a_full_disk_is_news_when_seen_and_when_space_is_back() -> None:
    watch = DiskWatch()
    assert watch.observe(10, 100, "/f") == [Record("disk_full", {"free_bytes": 10, "needed_bytes": 100, "path": "/f"})]
    assert watch.observe(20, 100, "/f") == []  # still full: not news
    assert watch.observe(500, 100, "/f") == [Record("disk_space", {"free_bytes": 500, "needed_bytes": 100})]
    assert watch.observe(500, 100, "/f") == []
    assert DiskWatch().observe(500, 100, "/f") == []  # never full: nothing to say


def test_attempts_always_carry_over_and_restarts_only_within_one_slurm_job() -> None:
    previous = {"attempt": 4, "restarts": 3, "slurm_job_id": "77"}
    assert carried_over(previous, None) == LoopState(attempt=4)
    assert carried_over(previous, "77") == LoopState(attempt=4, restarts=3)
    assert carried_over(previous, "78") == LoopState(attempt=4)  # a new job: a fresh restart budget


def test_a_damaged_previous_state_carries_nothing_over() -> None:
    for bad in ({"attempt": "two"}, {"attempt": -1}, {"attempt": True}, {"attempt": 2.5}, {}):
        assert carried_over(bad, None) == LoopState(attempt=0)
    assert carried_over({"attempt": 1, "restarts": "x", "slurm_job_id": "5"}, "5") == LoopState(attempt=1)


def test_every_is_due_at_once_then_after_each_interval() -> None:
    every = Every(30.0)
    assert every.due(100.0)
    assert not every.due(129.9)
    assert every.due(130.0)
    assert not every.due(131.0)


def test_the_platform_allowance_follows_where_a_stop_saves() -> None:
    from supervisor.core.rules import EPOCH_SAVE_S, STEP_SAVE_S, save_allowance_s

    assert save_allowance_s(False, "step", "auto") == 0.0  # nothing saved: nnU-Net is stopped
    assert save_allowance_s(True, "step", "auto") == STEP_SAVE_S < EPOCH_SAVE_S == save_allowance_s(True, "epoch",
                                                                                                     "auto")
    assert save_allowance_s(True, "step", 45.0) == 45.0  # the user's own stop_timeout_s


def test_every_platform_deadline_is_the_save_then_the_trees_grace_then_our_exit() -> None:
    from supervisor.core.rules import STEP_SAVE_S, STOP_MARGIN_S, stop_deadline_s

    assert stop_deadline_s(30.0, True, "step", "auto") == int(30 + STEP_SAVE_S + STOP_MARGIN_S)
    assert stop_deadline_s(30.0, False, "step", "auto") == int(30 + STOP_MARGIN_S)
    assert stop_deadline_s(12.5, True, "epoch", 100.0) == 172  # a user's stop_timeout_s, truncated to whole seconds

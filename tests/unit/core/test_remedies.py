"""Recovery by cause: the cause rules over scripted evidence, the remedy ladder, and the Decider that applies it.
Pure: no processes, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.core.causes import Evidence, KernelKill, find_cause
from supervisor.core.classify import classify_exit
from supervisor.core.lifecycle import Decider, LoopState, Phase
from supervisor.core.messages import Begin, ChildExited, Launch, Launched, Prepared, Record, Spawn, Tick
from supervisor.core.policy import RestartPolicy
from supervisor.core.remedies import (
    ALLOC_VAR,
    COMPILE_VAR,
    WORKERS_VAR,
    Applied,
    Change,
    Exhausted,
    Keep,
    Ladder,
    Remedies,
    RemedyOptions,
    Setting,
)
from supervisor.trainer.protocol import BATCH_SIZE_VAR

WORKER_DIED_LOG = ("Traceback (most recent call last):\n  File \"run_training.py\", line 1\n"
                   "RuntimeError: One or more background workers are no longer alive. Exiting. Please check the "
                   "print statements above for the actual error message")
SHM_LOG = ("RuntimeError: unable to write to file </torch_1234_2817436_0>: No space left on device (28)\n"
           + WORKER_DIED_LOG)
COMPILE_LOG = ("Traceback (most recent call last):\n  File \"nnUNetTrainer.py\", line 1010\n"
               "torch._inductor.exc.InductorError: InvalidCxxCompiler: No working C++ compiler found in "
               "torch._inductor.config.cpp.cxx: (None, '/nonexistent/c++')")
CUDA_LOG = ("Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
            "2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.06 GiB is free.")
WORKER_KILLED = Evidence(oom_kills=1, memory_cgroup="/sys/fs/cgroup/memory/t", memory_limit_bytes=3 << 30,
                         kernel_log=True, killed=(KernelKill(4321, "python", main=False, cgroup=True),),
                         peak_rss_bytes=3 << 30, processes=4)


NO_EVIDENCE = Evidence()


def cause_of(returncode: int, log: str, ev: Evidence = NO_EVIDENCE) -> str | None:
    c = classify_exit(returncode, log, finished=False)
    found = find_cause(c.kind, returncode, ev)
    return found.name if found else None


# ---- causes ----

def test_dying_workers_with_an_oom_kill_are_a_host_oom_and_the_story_names_the_victim() -> None:
    c = classify_exit(1, WORKER_DIED_LOG, finished=False)
    cause = find_cause(c.kind, 1, WORKER_KILLED)
    assert c.kind == "workers_died" and cause is not None and cause.name == "host_oom"
    assert "a worker python (pid 4321)" in cause.summary and "memory cgroup's limit" in cause.summary
    assert cause.evidence["oom_kills"] == 1 and cause.evidence["killed"][0]["pid"] == 4321


def test_a_sigkilled_main_process_is_a_host_oom_only_with_the_kernels_word_for_it() -> None:
    assert cause_of(-9, "") is None  # SIGKILL alone: a person's kill -9 is no OOM
    killed_main = Evidence(kernel_log=True, killed=(KernelKill(10, "nnUNetv2_train", main=True, cgroup=False),))
    assert cause_of(-9, "", killed_main) == "host_oom"


def test_dying_workers_without_an_oom_kill_stay_dying_workers() -> None:
    assert cause_of(1, WORKER_DIED_LOG, Evidence(oom_kills=0, kernel_log=True)) == "workers_died"


def test_shared_memory_errors_come_before_the_dying_workers_they_cause() -> None:
    assert cause_of(1, SHM_LOG) == "shm_exhausted"
    assert classify_exit(1, SHM_LOG, False).kind == "shm_exhausted"  # not disk_full: the disk is fine
    full_shm = Evidence(shm_size_bytes=64 << 20, shm_free_at_exit=0)
    assert cause_of(1, WORKER_DIED_LOG, full_shm) == "shm_exhausted"
    assert cause_of(-7, "") == "shm_exhausted"  # SIGBUS: a write into a full /dev/shm mapping


def test_a_disk_full_is_not_a_shared_memory_problem() -> None:
    log = "OSError: [Errno 28] No space left on device: '/data/results/fold_0/checkpoint_latest.pth'"
    assert classify_exit(1, log, False).kind == "disk_full" and cause_of(1, log) is None


def test_compile_errors_and_cuda_oom_are_named_from_the_log() -> None:
    assert cause_of(1, COMPILE_LOG) == "compile_error"
    c = find_cause("cuda_oom", 1, Evidence(phase="validation", epoch=12))
    assert c is not None and c.summary == "CUDA out of memory in validation at epoch 12"
    assert cause_of(1, CUDA_LOG) == "cuda_oom"
    assert cause_of(1, "Traceback (most recent call last):\nValueError: x") is None  # no cause: relaunch as is


# ---- the ladder ----

def ladder(**options: Any) -> Ladder:
    user = options.pop("user", {})
    setting = Setting(default_workers=options.pop("default_workers", 12), user_env=user,
                      user_source={k: "nnunet.env" for k in user}, cooperative=options.pop("cooperative", False),
                      batch_size=options.pop("batch_size", 2))
    return Ladder(RemedyOptions(**options), setting)


def walk(lad: Ladder, cause: str, steps: int) -> tuple[Remedies, list[Any]]:
    r, outcomes = Remedies(), []
    for attempt in range(2, 2 + steps):
        out = lad.next(cause, r, attempt, epoch=0, progressed=False)
        outcomes.append(out)
        if isinstance(out, Change):
            r = r.with_change(out.applied)
    return r, outcomes


def test_workers_are_halved_from_nnunets_own_count_down_to_the_floor_then_the_run_gives_up_with_the_story() -> None:
    r, outs = walk(ladder(), "host_oom", 6)
    assert [o.applied.new for o in outs if isinstance(o, Change)] == ["6", "3", "1", "0"]
    assert outs[0].applied.old is None  # unset: nnU-Net's own 12 applied
    assert isinstance(outs[4], Exhausted)
    assert "attempt 2: nnUNet_n_proc_DA (unset) -> 6 (after host_oom)" in outs[4].message
    assert "raise the limit" in outs[4].message  # what is left to the user
    assert r.value(WORKERS_VAR) == "0"


def test_at_the_floor_after_progress_the_run_relaunches_unchanged() -> None:
    lad = ladder(default_workers=2, min_workers=1)
    r = Remedies().with_change(Applied("host_oom", WORKERS_VAR, None, "1", 2, 0))
    assert isinstance(lad.next("host_oom", r, 5, epoch=40, progressed=True), Keep)
    assert isinstance(lad.next("host_oom", r, 5, epoch=40, progressed=False), Exhausted)


def test_the_users_own_value_is_never_changed_silently() -> None:
    out = ladder(user={WORKERS_VAR: "8"}).next("host_oom", Remedies(), 2, 0, False)
    assert isinstance(out, Keep)
    assert out.message.startswith("nnUNet_n_proc_DA=8 is your setting (nnunet.env)") and "override_user" in out.message
    allowed = ladder(user={WORKERS_VAR: "8"}, override_user=True).next("host_oom", Remedies(), 2, 0, False)
    assert isinstance(allowed, Change) and (allowed.applied.old, allowed.applied.new) == ("8", "4")


def test_a_shared_memory_shortage_says_the_real_fix() -> None:
    out = ladder(default_workers=2).next("shm_exhausted", Remedies(), 2, 0, False)
    assert isinstance(out, Change) and "--shm-size" in out.message and "emptyDir" in out.message


def test_compile_errors_turn_compile_off_once() -> None:
    _, outs = walk(ladder(), "compile_error", 2)
    assert isinstance(outs[0], Change) and outs[0].applied.variable == COMPILE_VAR and outs[0].applied.new == "f"
    assert isinstance(outs[1], Exhausted)  # the same error with compile off: not a compile problem after all
    assert isinstance(ladder(compile=False).next("compile_error", Remedies(), 2, 0, False), Keep)


def test_cuda_oom_first_expandable_segments_then_a_smaller_batch_only_when_opted_in() -> None:
    r, outs = walk(ladder(), "cuda_oom", 2)
    assert isinstance(outs[0], Change) and outs[0].applied.variable == ALLOC_VAR
    assert isinstance(outs[1], Exhausted) and "opt-in" in outs[1].message
    opted = Ladder(RemedyOptions(batch_size=True), Setting(12, {}, {}, cooperative=True, batch_size=4))
    r, outs = walk(opted, "cuda_oom", 4)
    assert [(o.applied.variable, o.applied.new) for o in outs if isinstance(o, Change)] == [
        (ALLOC_VAR, "expandable_segments:True"), (BATCH_SIZE_VAR, "2")]
    assert isinstance(outs[2], Exhausted)
    no_shim = Ladder(RemedyOptions(batch_size=True), Setting(12, {}, {}, cooperative=False, batch_size=4))
    r = Remedies().with_change(Applied("cuda_oom", ALLOC_VAR, None, "expandable_segments:True", 2, 0))
    out = no_shim.next("cuda_oom", r, 3, 0, True)
    assert isinstance(out, Keep) and "cooperative.enabled: true" in out.message


def test_the_users_alloc_conf_is_extended_only_when_allowed() -> None:
    user = {ALLOC_VAR: "max_split_size_mb:128"}
    assert isinstance(ladder(user=user).next("cuda_oom", Remedies(), 2, 0, True), Keep)
    out = ladder(user=user, override_user=True).next("cuda_oom", Remedies(), 2, 0, True)
    assert isinstance(out, Change) and out.applied.new == "max_split_size_mb:128,expandable_segments:True"


def test_remedies_survive_state_json_and_damage_to_it_loses_only_them() -> None:
    r = Remedies().with_change(Applied("host_oom", WORKERS_VAR, None, "1", 2, 3))
    assert Remedies.from_document(r.document()) == r
    for damaged in (None, [], {"env": "x"}, {"env": {"a": 1}, "history": [{"cause": 1}, "x"]}):
        assert Remedies.from_document(damaged) == Remedies()


def test_remedies_off_is_todays_behaviour() -> None:
    assert isinstance(ladder(enabled=False).next("host_oom", Remedies(), 2, 0, False), Keep)


# ---- the Decider applies them ----

def decider(lad: Ladder | None, **policy: Any) -> Decider:
    return Decider(RestartPolicy(**policy), stop_grace_s=30, rand=lambda: 0.0, ladder=lad)


def run_attempt(d: Decider, s: LoopState, now: float) -> tuple[LoopState, list[Any]]:
    """From STARTING to RUNNING: Prepared -> Spawn (returned) -> Launched."""
    s, actions = d.step(s, Prepared(resume=True), now)
    s, _ = d.step(s, Launched(100 + s.attempt, ("nnUNetv2_train",), True), now)
    return s, actions


def fail(d: Decider, s: LoopState, now: float, log: str, ev: Evidence, epochs: int = 0) -> tuple[LoopState, list[Any]]:
    return d.step(s, ChildExited(1, log, False, epochs, ev), now)


def test_the_decider_records_the_cause_changes_one_thing_and_spawns_with_it() -> None:
    d = decider(ladder(default_workers=2))
    s, _ = d.step(LoopState(), Begin(finished=False, resume=False), 0.0)
    s, spawn = run_attempt(d, s, 0.0)
    assert spawn == [Spawn(1, True, None, ())]
    s, actions = fail(d, s, 1.0, WORKER_DIED_LOG, WORKER_KILLED)
    exit_ = next(a.fields for a in actions if isinstance(a, Record) and a.event == "exit")
    assert exit_["cause"] == "host_oom" and exit_["evidence"]["oom_kills"] == 1
    remedy = next(a.fields for a in actions if isinstance(a, Record) and a.event == "remedy")
    assert {k: remedy[k] for k in ("cause", "variable", "from", "to", "attempt")} == {
        "cause": "host_oom", "variable": WORKERS_VAR, "from": None, "to": "1", "attempt": 2}
    s, relaunch = d.step(s, Tick(), 1000.0)
    assert relaunch == [Launch(2, True, ((WORKERS_VAR, "1"),))]  # the preparation knows a remedy is in effect
    s, spawn = run_attempt(d, s, 1000.0)
    assert spawn == [Spawn(2, True, None, ((WORKERS_VAR, "1"),))]
    s, done = d.step(s, ChildExited(0, "", True, 5), 2000.0)
    finished = next(a.fields for a in done if isinstance(a, Record) and a.event == "finished")
    assert s.phase is Phase.FINISHED and finished["remedies"] == {WORKERS_VAR: "1"}


def test_the_same_cause_without_progress_after_the_last_remedy_gives_up_with_the_story() -> None:
    d = decider(ladder(default_workers=1), max_attempts_without_progress=10)
    s, _ = d.step(LoopState(), Begin(finished=False, resume=False), 0.0)
    s, _ = run_attempt(d, s, 0.0)
    s, _ = fail(d, s, 1.0, WORKER_DIED_LOG, WORKER_KILLED)  # 1 -> 0
    s, _ = d.step(s, Tick(), 1000.0)
    s, _ = run_attempt(d, s, 1000.0)
    s, actions = fail(d, s, 1001.0, WORKER_DIED_LOG, WORKER_KILLED)
    give_up = next(a.fields for a in actions if isinstance(a, Record) and a.event == "give_up")
    assert s.phase is Phase.FAILED and give_up["reason"] == "remedies_exhausted"
    assert "nnUNet_n_proc_DA (unset) -> 0" in str(give_up["message"])


def test_without_a_ladder_a_cause_is_recorded_and_nothing_changes() -> None:
    d = decider(None)
    s, _ = d.step(LoopState(), Begin(finished=False, resume=False), 0.0)
    s, _ = run_attempt(d, s, 0.0)
    s, actions = fail(d, s, 1.0, WORKER_DIED_LOG, WORKER_KILLED)
    assert not [a for a in actions if isinstance(a, Record) and a.event == "remedy"]
    assert s.remedies == Remedies() and s.phase is Phase.BACKOFF


@pytest.mark.parametrize("log,evidence,cause", [(COMPILE_LOG, Evidence(), "compile_error"),
                                                (CUDA_LOG, Evidence(phase="training"), "cuda_oom")])
def test_each_cause_reaches_its_remedy_through_the_decider(log: str, evidence: Evidence, cause: str) -> None:
    d = decider(ladder())
    s, _ = d.step(LoopState(), Begin(finished=False, resume=False), 0.0)
    s, _ = run_attempt(d, s, 0.0)
    s, actions = fail(d, s, 1.0, log, evidence)
    remedy = next(a.fields for a in actions if isinstance(a, Record) and a.event == "remedy")
    assert remedy["cause"] == cause


def test_the_summary_quotes_the_line_that_named_the_cause_not_a_later_dying_worker() -> None:
    c = classify_exit(1, COMPILE_LOG + "\n" + WORKER_DIED_LOG, finished=False)
    assert c.kind == "compile_error" and "InductorError: InvalidCxxCompiler" in c.summary

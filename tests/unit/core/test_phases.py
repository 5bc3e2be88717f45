"""Where an attempt failed decides how it is relaunched and what is changed: the final validation is relaunched with
--val and gets fewer export processes; a trainer whose torch.load refuses a checkpoint we verified gets the variable
that lets it load; a machine without an NVIDIA driver stops at once. Pure: scripted events, no processes."""

from __future__ import annotations

from typing import Any

from supervisor.core.causes import Evidence, find_cause
from supervisor.core.classify import classify_exit
from supervisor.core.lifecycle import Decider, LoopState, Phase
from supervisor.core.messages import Begin, ChildExited, Launch, Launched, Prepared, Record, Say, Spawn, Tick
from supervisor.core.policy import RestartPolicy
from supervisor.core.remedies import (
    EXPORT_VAR,
    WEIGHTS_VAR,
    WORKERS_VAR,
    Change,
    Exhausted,
    Ladder,
    Remedies,
    RemedyOptions,
    Setting,
)
from supervisor.core.rules import attempt_phase

WORKERS_DIED_LOG = ("Traceback (most recent call last):\n"
                    "RuntimeError: One or more background workers are no longer alive")
OOM = Evidence(oom_kills=1, memory_cgroup="/t", kernel_log=True)

# torch 2.14's own words (captured from a real torch.load of an nnU-Net checkpoint without weights_only=False)
WEIGHTS_ONLY_LOG = """Traceback (most recent call last):
  File "/venv/bin/nnUNetv2_train", line 8, in <module>
    sys.exit(run_training_entry())
  File "/venv/lib/python3.11/site-packages/nnunetv2/run/run_training.py", line 93, in maybe_load_checkpoint
    nnunet_trainer.load_checkpoint(expected_checkpoint_file)
  File "/home/me/trainers/MyTrainer.py", line 86, in load_checkpoint
    checkpoint = torch.load(filename_or_checkpoint, map_location=self.device)
  File "/venv/lib/python3.11/site-packages/torch/serialization.py", line 1614, in load
    raise pickle.UnpicklingError(_get_wo_message(str(e))) from None
_pickle.UnpicklingError: Weights only load failed. This file can still be loaded, to do so you have two options
\tWeightsUnpickler error: Unsupported global: GLOBAL numpy._core.multiarray.scalar was not an allowed global by default.
"""
NO_DRIVER_LOG = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                 "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
                 "installed a driver from http://www.nvidia.com/Download/index.aspx")


def ladder(**setting: Any) -> Ladder:
    return Ladder(RemedyOptions(), Setting(default_workers=setting.pop("default_workers", 2), user_env={},
                                           user_source={}, **setting))


def decider(lad: Ladder | None = None, **policy: Any) -> Decider:
    return Decider(RestartPolicy(**policy), stop_grace_s=30, rand=lambda: 0.0, ladder=lad)


def records(actions: list[Any], name: str) -> list[dict[str, Any]]:
    return [a.fields for a in actions if isinstance(a, Record) and a.event == name]


def running(d: Decider, validate: bool = False) -> LoopState:
    s, _ = d.step(LoopState(), Begin(finished=False, resume=True, best_epoch=10), 0.0)
    s, spawn = d.step(s, Prepared(resume=True, validate=validate), 0.0)
    assert spawn == [Spawn(1, True, None, (), validate)]
    s, _ = d.step(s, Launched(100, ("nnUNetv2_train",), True, validate), 0.0)
    return s


# ---- the phase ----

def test_the_phase_is_validation_exactly_when_checkpoint_final_exists() -> None:
    assert attempt_phase("startup", final_checkpoint=False) == "startup"
    assert attempt_phase("training", final_checkpoint=False) == "training"
    assert attempt_phase("validation", final_checkpoint=False) == "training"  # "Training done." but no final save
    assert attempt_phase("training", final_checkpoint=True) == "validation"
    assert attempt_phase("startup", final_checkpoint=True) == "validation"  # a --val attempt that died early


def test_every_exit_carries_its_phase_and_a_validation_failure_is_relaunched_with_val() -> None:
    d = decider()
    s = running(d)
    s, actions = d.step(s, ChildExited(-9, "", False, 10, phase="validation"), 1.0)
    assert records(actions, "exit")[0]["phase"] == "validation"
    said = " ".join(a.message for a in actions if isinstance(a, Say))
    assert "relaunching with --val" in said and "--c" not in said
    s, relaunch = d.step(s, Tick(), 100.0)
    assert relaunch == [Launch(2, True)]
    s, spawn = d.step(s, Prepared(resume=True, validate=True), 100.0)
    assert spawn == [Spawn(2, True, None, (), True)]
    s, actions = d.step(s, Launched(101, ("nnUNetv2_train", "--val"), True, True, (("nnUNet_def_n_proc", "1"),)),
                        100.0)
    launch = records(actions, "launch")[0]
    assert launch["validate"] is True and launch["sized"] == {"nnUNet_def_n_proc": "1"}
    assert any("with --val" in a.message for a in actions if isinstance(a, Say))


def test_a_training_failure_stays_a_c_relaunch() -> None:
    d = decider()
    _, actions = d.step(running(d), ChildExited(-9, "", False, 5, phase="training"), 1.0)
    assert records(actions, "exit")[0]["phase"] == "training"
    assert any("relaunching with --c" in a.message for a in actions if isinstance(a, Say))


# ---- validation remedies: the export pool, not the augmentation workers ----

def test_in_the_final_validation_host_oom_halves_the_export_pool_from_nnunets_eight() -> None:
    lad, r, news = ladder(), Remedies(), []
    for attempt in range(2, 7):
        out = lad.next("host_oom", r, attempt, 10, progressed=False, phase="validation")
        if isinstance(out, Change):
            assert out.applied.variable == EXPORT_VAR
            news.append(out.applied.new)
            r = r.with_change(out.applied)
        else:
            break
    assert news == ["4", "2", "1"]  # never 0: nnU-Net's Pool needs one process
    assert isinstance(out, Exhausted) and "nnUNet_def_n_proc" in out.message
    assert r.value(WORKERS_VAR) is None  # the augmentation workers were left alone


def test_the_export_halving_starts_from_the_count_fitted_to_the_allocation() -> None:
    out = ladder(default_export=2).next("workers_died", Remedies(), 2, 10, progressed=True, phase="validation")
    assert isinstance(out, Change) and (out.applied.old, out.applied.new) == (None, "1")


def test_the_decider_remedies_a_validation_oom_through_the_export_pool() -> None:
    d = decider(ladder())
    s, actions = d.step(running(d), ChildExited(1, WORKERS_DIED_LOG, False, 10, OOM, phase="validation"), 1.0)
    remedy = records(actions, "remedy")[0]
    assert (remedy["variable"], remedy["from"], remedy["to"]) == (EXPORT_VAR, None, "4")
    assert s.phase is Phase.BACKOFF


# ---- a trainer whose torch.load refuses our verified checkpoint ----

def test_torchs_weights_only_refusal_is_not_called_a_damaged_checkpoint() -> None:
    c = classify_exit(1, WEIGHTS_ONLY_LOG, False)
    assert c.kind == "weights_only_refused" and not c.retryable
    assert "load_checkpoint() at /home/me/trainers/MyTrainer.py:86" in c.summary  # the method to fix
    assert "damaged" not in c.summary and "move" not in c.advice


def test_a_verified_checkpoint_refused_by_the_trainer_relaunches_once_with_the_variable() -> None:
    d = decider(ladder())
    verified = Evidence(resumed_verified="/r/fold_0/checkpoint_latest.pth")
    s, actions = d.step(running(d), ChildExited(1, WEIGHTS_ONLY_LOG, False, 10, verified, phase="startup"), 1.0)
    exit_ = records(actions, "exit")[0]
    assert exit_["cause"] == "weights_only_load" and "found intact" in exit_["cause_summary"]
    remedy = records(actions, "remedy")[0]
    assert (remedy["variable"], remedy["to"]) == (WEIGHTS_VAR, "1")
    assert s.phase is Phase.BACKOFF
    # the same refusal with the variable in effect: nothing is left to change, the advice names the method
    s, _ = d.step(s, Tick(), 100.0)
    s, spawn = d.step(s, Prepared(resume=True), 100.0)
    assert spawn == [Spawn(2, True, None, ((WEIGHTS_VAR, "1"),))]
    s, _ = d.step(s, Launched(101, ("x",), True), 100.0)
    s, actions = d.step(s, ChildExited(1, WEIGHTS_ONLY_LOG, False, 10, verified, phase="startup"), 101.0)
    assert s.phase is Phase.FAILED
    assert records(actions, "give_up")[0]["reason"] == "weights_only_refused"


def test_without_our_verification_of_the_file_the_refusal_is_not_overridden() -> None:
    assert find_cause("weights_only_refused", 1, Evidence()) is None
    d = decider(ladder())
    s, actions = d.step(running(d), ChildExited(1, WEIGHTS_ONLY_LOG, False, 10, phase="startup"), 1.0)
    assert s.phase is Phase.FAILED and not records(actions, "remedy")
    assert "weights_only=False" in records(actions, "give_up")[0]["message"]


# ---- a machine without the GPU the config asks for ----

def test_no_nvidia_driver_stops_at_once_naming_the_device_and_what_would_work() -> None:
    c = classify_exit(1, NO_DRIVER_LOG, False)
    assert c.kind == "no_gpu" and not c.retryable
    assert "nnunet.device: cpu" in c.advice
    d = decider()
    s, actions = d.step(running(d), ChildExited(1, NO_DRIVER_LOG, False, 0, phase="startup"), 1.0)
    assert s.phase is Phase.FAILED and records(actions, "give_up")[0]["reason"] == "no_gpu"

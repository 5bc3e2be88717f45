"""The runner with real processes but a fake trainer script: plumbing, events, state, signals, locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.context import RunContext
from supervisor.core.messages import StopRequested
from supervisor.daemon.process import TrainerProcess, marked_processes, wait_until
from supervisor.daemon.runner import Runner
from supervisor.errors import LockedError
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from supervisor.trainer.protocol import MARKER_VAR
from tests.conftest import fake_spawn, make_ctx

pytestmark = pytest.mark.process  # real processes (seconds)


def runner(ctx: RunContext) -> Runner:
    return Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0)


def events(ctx: RunContext) -> list[dict[str, Any]]:
    return list(read_events(ctx.layout.events_file))


def names(ctx: RunContext) -> list[str]:
    return [e["event"] for e in events(ctx)]


def in_background(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_crash_then_resume_with_c_then_finish(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 3], "outcome": "crash"}, {"epochs": [2, 5], "outcome": "finish"}])
    assert runner(ctx).run() == 0
    assert names(ctx) == ["launch", "exit", "backoff", "launch", "exit", "finished"]
    launches = [e for e in events(ctx) if e["event"] == "launch"]
    assert [e["resume"] for e in launches] == [False, True]
    assert "--c" not in launches[0]["argv"] and launches[1]["argv"][-1] == "--c"
    first_exit = events(ctx)[1]
    assert first_exit["classification"] == "python_exception" and first_exit["retryable"] is True
    assert first_exit["epochs_completed"] == 3
    assert "RuntimeError: boom" in ctx.layout.attempt_log(1).read_text()
    state = StateStore(ctx.layout.state_file).load()
    assert state["state"] == "finished" and state["attempt"] == 2 and state["restarts"] == 1
    assert state["pid"] is None and state["resumable"] is False


def test_trainer_gets_attempt_number_and_marker(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"outcome": "finish"}])
    seen: dict[str, str] = {}

    def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> TrainerProcess:
        seen.update(env)
        return fake_spawn(argv, env, log, cwd)

    assert Runner(ctx, spawn=spawn, tick_s=0.05).run() == 0
    assert seen["NNUNET_SUPERVISE_ATTEMPT"] == "1"
    assert seen[MARKER_VAR] == str(ctx.layout.fold_dir)
    assert seen["nnUNet_results"] == str(tmp_path / "res")


def test_non_retryable_failure_exits_1_after_one_launch(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [4, 4], "outcome": "incompatible"}])
    assert runner(ctx).run() == 1
    assert names(ctx) == ["launch", "exit", "incompatible_checkpoint", "give_up"]
    assert events(ctx)[-1]["reason"] == "incompatible_checkpoint"
    assert events(ctx)[2]["missing_keys"] == ["decoder.seg_layers.4.weight"]


@pytest.fixture(scope="module")
def epoch5_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from tests.ckpt_fixtures import nnunet_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "epoch5.pth"
    torch.save(nnunet_checkpoint(current_epoch=5), path)
    return path


@pytest.mark.parametrize("second, reason", [
    ({"no_checkpoint": True, "epochs": [0, 1], "outcome": "hang"}, "fresh_start_detected"),
    ({"epochs": [2, 3], "outcome": "hang"}, "epoch_regression"),
])
def test_a_resume_that_does_not_start_at_the_verified_epoch_is_stopped(
        tmp_path: Path, epoch5_checkpoint: Path, second: dict[str, Any], reason: str) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 5], "checkpoint": str(epoch5_checkpoint), "outcome": "crash"}, second])
    assert runner(ctx).run() == 1
    evs = events(ctx)
    assert [e["event"] for e in evs if e["event"] in ("checkpoint_verified", "launch")] == [
        "launch", "checkpoint_verified", "launch"]
    assert evs[-1]["event"] == "give_up" and evs[-1]["reason"] == reason
    assert "epoch 5" in evs[-1]["message"]
    assert marked_processes(str(ctx.layout.fold_dir)) == []  # the second attempt was stopped, not left training


def test_no_progress_gives_up(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"outcome": "1"}] * 5, max_attempts_without_progress=2)
    assert runner(ctx).run() == 1
    assert names(ctx).count("launch") == 2
    assert events(ctx)[-1]["reason"] == "no_progress"


def test_finished_fold_exits_0_without_launching(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"outcome": "finish"}])
    fold = ctx.layout.fold_dir
    (fold / "validation").mkdir(parents=True)
    (fold / "validation" / "summary.json").write_text("{}")
    (fold / "checkpoint_final.pth").write_bytes(b"x")
    assert runner(ctx).run() == 0
    assert names(ctx) == ["finished"]


def test_stop_request_terminates_the_trainer_and_exits_75(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 2], "outcome": "hang"}])
    r = runner(ctx)

    def stop_when_running() -> None:
        assert wait_until(lambda: "hanging" in ctx.layout.attempt_log(1).read_text()
                          if ctx.layout.attempt_log(1).exists() else False, 30)
        r.queue.put(StopRequested("SIGTERM"))

    in_background(stop_when_running)
    assert r.run() == 75
    assert names(ctx)[-2:] == ["stop_requested", "exit"]
    state = StateStore(ctx.layout.state_file).load()
    assert state["state"] == "stopped" and state["resumable"] is True and state["pid"] is None


def test_real_signal_to_the_supervisor_stops_resumably(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"outcome": "hang"}])
    r = runner(ctx)

    def signal_when_running() -> None:
        assert wait_until(lambda: StateStore(ctx.layout.state_file).load().get("state") == "running", 30)
        os.kill(os.getpid(), signal.SIGUSR1)

    in_background(signal_when_running)
    assert r.run() == 75
    assert next(e for e in events(ctx) if e["event"] == "stop_requested")["signal"] == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored on the way out


def test_second_supervisor_is_refused_while_the_lock_is_held(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"outcome": "finish"}])
    ctx.layout.supervisor_dir.mkdir(parents=True)
    held = RunLock(ctx.layout.lock_file)
    held.acquire()
    try:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            runner(ctx).run()
    finally:
        held.release()
    assert not ctx.layout.events_file.exists()  # refused before touching anything


def test_orphaned_trainer_of_a_dead_supervisor_is_stopped_before_launch(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"outcome": "finish"}])
    env = {**os.environ, MARKER_VAR: str(ctx.layout.fold_dir)}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    assert runner(ctx).run() == 0
    orphan.wait(timeout=10)  # the runner already reaped it (it is our child here), so only its end is checked
    assert not psutil.pid_exists(orphan.pid)
    assert names(ctx)[0] == "orphan_stopped"
    assert orphan.pid in events(ctx)[0]["pids"]


def test_a_hung_trainer_is_dumped_killed_and_relaunched(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 2], "outcome": "hang"}, {"epochs": [2, 4], "outcome": "finish"}],
                   heartbeat={"stall_timeout_s": 1.0})
    assert runner(ctx).run() == 0
    evs = events(ctx)
    assert [e["event"] for e in evs] == ["launch", "stall", "stack_dump", "exit", "backoff", "launch", "exit",
                                         "finished"]
    stall, dump = evs[1], evs[2]
    assert stall["phase"] == "training" and stall["timeout_s"] == 1.0 and "no progress for" in stall["message"]
    assert stall["dump"] == dump["path"] and "stack dump of 1/1" in dump["note"]
    assert "fake_trainer.py" in Path(stall["dump"]).read_text()  # py-spy saw where it hangs
    assert evs[3]["classification"] == "stall" and evs[3]["retryable"] is True
    assert evs[5]["resume"] is True


def test_a_trainer_that_finished_but_lingers_is_stopped_and_the_run_ends_finished(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 3], "outcome": "linger"}], heartbeat={"linger_grace_s": 0.5})
    assert runner(ctx).run() == 0
    assert names(ctx) == ["launch", "lingering", "exit", "finished"]
    assert marked_processes(str(ctx.layout.fold_dir)) == []


def test_nan_losses_for_n_epochs_stop_as_diverged_without_a_relaunch(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 4], "loss": "nan", "outcome": "hang"}], heartbeat={"nan_loss_epochs": 3})
    assert runner(ctx).run() == 1
    assert names(ctx) == ["launch", "exit", "give_up"]
    assert events(ctx)[-1]["reason"] == "diverged" and "nan for 4 epochs" in events(ctx)[-1]["message"]


def test_on_battery_at_the_threshold_the_run_stops_resumably(tmp_path: Path) -> None:
    from supervisor.core.power import BatteryReading

    readings = [BatteryReading(90, False), BatteryReading(40, True), BatteryReading(12, True)]
    ctx = make_ctx(tmp_path, [{"epochs": [0, 1], "outcome": "hang"}], power={"check_every_s": 0.01})
    r = Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0,
               battery=lambda: readings.pop(0) if len(readings) > 1 else readings[0])
    assert r.run() == 75
    power = [e for e in events(ctx) if e["event"] == "power"]
    assert [(e["kind"], e["percent"]) for e in power] == [("on_battery", 40), ("battery_low", 12)]
    stop = next(e for e in events(ctx) if e["event"] == "stop_requested")
    assert stop["reason"].startswith("power: battery at 12%")
    assert StateStore(ctx.layout.state_file).load()["resumable"] is True


def test_a_hardware_class_gpu_fault_stops_the_trainer_and_gives_up(tmp_path: Path) -> None:
    from supervisor.gpu.monitor import GpuFault

    ctx = make_ctx(tmp_path, [{"epochs": [0, 1], "outcome": "hang"}] * 2)
    r = runner(ctx)

    def inject() -> None:
        wait_until(lambda: any(e["event"] == "launch" for e in events(ctx)), 10)
        r.queue.put_gpu_report(GpuFault("0", 13, "xid", False, "Xid 13 (graphics engine exception)"))
        r.queue.put_gpu_report(GpuFault("0", 79, "xid", True, "Xid 79 (GPU has fallen off the bus)"))

    in_background(inject)
    assert r.run() == 1
    faults = [e for e in events(ctx) if e["event"] == "gpu_fault"]
    assert [(e["xid"], e["hardware"]) for e in faults] == [(13, False), (79, True)]
    give_up = events(ctx)[-1]
    assert give_up["reason"] == "gpu_fault" and "fallen off the bus" in give_up["message"]
    assert names(ctx).count("launch") == 1 and marked_processes(str(ctx.layout.fold_dir)) == []


def test_cooperative_stop_asks_the_trainer_to_save_and_exits_75(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 2], "outcome": "cooperate"}], cooperative={"enabled": True})
    r = runner(ctx)

    def stop_once_it_runs() -> None:
        log = ctx.layout.attempt_log(1)
        wait_until(lambda: log.exists() and "cooperating" in log.read_text(), 30)
        r.queue.put(StopRequested("SIGUSR1"))

    threading.Thread(target=stop_once_it_runs, daemon=True).start()
    assert r.run() == 75
    evs = events(ctx)
    assert [e["event"] for e in evs] == ["launch", "stop_requested", "exit"]
    assert evs[0]["argv"][1:3] == ["-m", "supervisor.trainer.launch"]
    assert "after saving a checkpoint" in evs[2]["summary"]
    assert ctx.layout.checkpoint("checkpoint_latest.pth").read_bytes() == b"saved on request"


def test_a_full_disk_waits_for_space_then_relaunches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = iter([0, 0, 10**15])
    monkeypatch.setattr("supervisor.stages.training.sensors.free_bytes", lambda folder: next(free))
    ctx = make_ctx(tmp_path, [{"epochs": [0, 2], "outcome": "disk_full"}, {"epochs": [2, 4], "outcome": "finish"}],
                   cooperative={"enabled": True})
    r = Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0)
    r.decider.disk_check_s = 0.05
    assert r.run() == 0
    evs = events(ctx)
    assert [e["event"] for e in evs] == ["launch", "exit", "backoff", "disk_full", "disk_space", "launch", "exit",
                                         "finished"]
    assert evs[1]["classification"] == "disk_full" and evs[3]["free_bytes"] == 0

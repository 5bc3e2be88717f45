"""The runner driven through a fake OS (FakeOps): every action it takes, in order, with no process and no sleep.

The same runner against real processes is in test_runner.py; these show that the runner only carries out what
the lifecycle decides, and that its slow work (preparing a launch, dumping stacks) stays off the main loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supervisor.core.messages import StopRequested
from supervisor.daemon.runner import Runner
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore
from tests.conftest import FakeClock, FakeOps, make_ctx


def run(tmp_path: Path, plan: list[dict[str, Any]], **config: Any) -> tuple[int, FakeOps, list[dict[str, Any]]]:
    ctx = make_ctx(tmp_path, plan, **config)
    ops = FakeOps(plan)
    code = Runner(ctx, ops=ops, clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0).run()
    return code, ops, list(read_events(ctx.layout.events_file))


def test_a_crash_is_relaunched_with_c_and_the_run_finishes(tmp_path: Path) -> None:
    code, ops, evs = run(tmp_path, [{"epochs": [0, 3], "outcome": "crash"}, {"epochs": [2, 5], "outcome": "finish"}])
    assert code == 0
    assert [e["event"] for e in evs] == ["launch", "exit", "backoff", "launch", "exit", "finished"]
    assert evs[1]["classification"] == "python_exception" and evs[1]["epochs_completed"] == 3
    spawns = [line for line in ops.log if line.startswith("spawn")]
    assert len(spawns) == 2 and "--c" not in spawns[0] and spawns[1].endswith("--c")
    state = StateStore(tmp_path / "res" / "Dataset901_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
                       / "supervisor" / "state.json").load()
    assert state["state"] == "finished" and state["restarts"] == 1 and state["pid"] is None


def test_a_stall_is_recorded_then_its_stacks_dumped_then_its_tree_terminated(tmp_path: Path) -> None:
    code, ops, evs = run(tmp_path, [{"epochs": [0, 2], "outcome": "hang"}, {"epochs": [2, 4], "outcome": "finish"}],
                         heartbeat={"stall_timeout_s": 1.0})
    assert code == 0
    assert [e["event"] for e in evs] == ["launch", "stall", "stack_dump", "exit", "backoff", "launch", "exit",
                                         "finished"]
    # the dump ran off the main loop; SIGTERM was held back until it was taken
    kinds = [line.split()[0] for line in ops.log]
    assert kinds[:3] == ["spawn", "dump", "SIGTERM"] and kinds[-1] == "spawn"
    # (a SIGKILL may follow the SIGTERM: the fake clock runs the grace period out faster than the waiter thread
    # reports the exit; it reaches a trainer that is already gone)
    assert set(kinds[3:-1]) <= {"SIGKILL"}
    assert evs[2]["note"] == f"stack dump of 1/1 process(es) in {evs[1]['dump']}"
    assert evs[3]["classification"] == "stall" and evs[3]["returncode"] == -15


def test_a_stop_while_the_first_launch_is_prepared_launches_nothing(tmp_path: Path) -> None:
    plan = [{"epochs": [0, 1], "outcome": "hang"}]
    ctx = make_ctx(tmp_path, plan)
    ops = FakeOps(plan)
    runner = Runner(ctx, ops=ops, clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0)
    runner.queue.put(StopRequested("SIGTERM"))  # already waiting when the loop first looks
    assert runner.run() == 75
    assert ops.log == []
    assert [e["event"] for e in read_events(ctx.layout.events_file)] == ["stop_requested"]
    assert StateStore(ctx.layout.state_file).load()["resumable"] is True


def test_a_trainer_that_cannot_be_started_gives_up(tmp_path: Path) -> None:
    plan = [{"outcome": "finish"}]
    ctx = make_ctx(tmp_path, plan)

    class Refusing(FakeOps):
        def spawn(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> Any:
            raise OSError(2, "No such file or directory", argv[0])

    assert Runner(ctx, ops=Refusing(plan), clock=FakeClock(), tick_s=0.01).run() == 1
    give_up = list(read_events(ctx.layout.events_file))[-1]
    assert give_up["event"] == "give_up" and give_up["reason"] == "launch_failed"
    assert "No such file or directory" in give_up["message"]


def test_the_main_loop_gap_is_measured_and_kept_in_state(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 1], "outcome": "finish"}])
    runner = Runner(ctx, ops=FakeOps([{"epochs": [0, 1], "outcome": "finish"}]), clock=FakeClock(step=0.5),
                    tick_s=0.01)
    assert runner.run() == 0
    assert runner.main_loop_max_gap_s > 0
    assert StateStore(ctx.layout.state_file).load()["main_loop_max_gap_s"] == round(runner.main_loop_max_gap_s, 1)


WORKERS_GONE = ("Traceback (most recent call last):\nRuntimeError: One or more background workers are no longer alive. "
                "Exiting.")


def test_an_oom_killed_worker_halves_the_workers_the_next_attempt_gets_and_a_restart_keeps_them(
        tmp_path: Path) -> None:
    plan = [{"epochs": [0, 1], "outcome": "crash", "print": WORKERS_GONE, "killed": [{"main": False}]},
            {"epochs": [1, 2], "outcome": "crash", "print": WORKERS_GONE},  # progress, no OOM: plain dying workers
            {"epochs": [2, 4], "outcome": "finish"}]
    code, ops, evs = run(tmp_path, plan, remedies={"min_workers": 0})
    assert code == 0
    exits = [e for e in evs if e["event"] == "exit"]
    assert exits[0]["cause"] == "host_oom" and exits[0]["evidence"]["killed"][0]["cgroup"] is True
    remedies = [e for e in evs if e["event"] == "remedy"]
    first = min(2, os.cpu_count() or 1)  # nnU-Net's own count here: 12, capped at the CPU count
    assert remedies[0]["variable"] == "nnUNet_n_proc_DA" and remedies[0]["to"] == str(first // 2)
    assert "nnUNet_n_proc_DA" not in ops.envs[0] and ops.envs[1]["nnUNet_n_proc_DA"] == str(first // 2)
    assert [e["event"] for e in evs].index("remedy") < [e["event"] for e in evs].index("backoff")
    assert evs[-1]["event"] == "finished" and evs[-1]["remedies"]["nnUNet_n_proc_DA"] == ops.envs[-1][
        "nnUNet_n_proc_DA"]
    layout = make_ctx(tmp_path, plan).layout
    state = StateStore(layout.state_file).load()
    assert state["remedies"]["env"] == {"nnUNet_n_proc_DA": ops.envs[-1]["nnUNet_n_proc_DA"]}
    header = layout.attempt_log(2).read_text().splitlines()[1]
    assert header == f"# nnunet-supervise remedy in effect: nnUNet_n_proc_DA={first // 2}"


def test_a_new_supervisor_carries_the_remedies_on(tmp_path: Path) -> None:
    plan = [{"epochs": [0, 1], "outcome": "crash", "print": WORKERS_GONE, "killed": [{"main": False}]},
            {"epochs": [1, 2], "outcome": "hang"}]
    ctx = make_ctx(tmp_path, plan, remedies={"min_workers": 0})
    ops = FakeOps(plan)
    runner = Runner(ctx, ops=ops, clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0)
    ops.on_spawn = lambda attempt: runner.queue.put(StopRequested("SIGTERM")) if attempt == 2 else None
    assert runner.run() == 75
    again = [{"epochs": [2, 3], "outcome": "finish"}]
    ops2 = FakeOps([{}, {}, *again])
    assert Runner(ctx, ops=ops2, clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0).run() == 0
    assert ops2.envs[0]["nnUNet_n_proc_DA"] == ops.envs[1]["nnUNet_n_proc_DA"]


def test_the_users_worker_count_is_left_alone_and_the_log_says_so(tmp_path: Path) -> None:
    plan = [{"epochs": [0, 1], "outcome": "crash", "print": WORKERS_GONE, "killed": [{"main": False}]},
            {"epochs": [1, 3], "outcome": "finish"}]
    code, ops, evs = run(tmp_path, plan, nnunet_env={"nnUNet_n_proc_DA": "2"})
    assert code == 0 and not [e for e in evs if e["event"] == "remedy"]
    assert ops.envs[1]["nnUNet_n_proc_DA"] == "2"


def test_the_fitted_counts_reach_the_trainer_the_launch_event_and_the_log_header(tmp_path: Path) -> None:
    plan = [{"epochs": [0, 1], "outcome": "crash"}, {"epochs": [1, 2], "outcome": "finish"}]
    ctx = make_ctx(tmp_path, plan, remedies={"fit_allocation": True})
    ops = FakeOps(plan)
    sized = {"nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
    assert Runner(ctx, ops=ops, clock=FakeClock(), tick_s=0.01, leftover_grace_s=0.0, sized=sized).run() == 0
    launches = [e for e in read_events(ctx.layout.events_file) if e["event"] == "launch"]
    assert [e["sized"] for e in launches] == [sized, sized]
    assert all(env["nnUNet_def_n_proc"] == "1" and env["OMP_NUM_THREADS"] == "1" for env in ops.envs)
    assert "# nnunet-supervise sized to the allocation: OMP_NUM_THREADS=1" in ctx.layout.attempt_log(1).read_text()

"""The experiment scheduler's rules, pure: packing, dependencies, a fold giving up, a GPU leaving the pool, a
restart of the experiment supervisor, a stop. No process, no clock."""

from __future__ import annotations

from supervisor.experiment.context import Cell
from supervisor.experiment.schedule import (
    Begin,
    CellState,
    CellStatus,
    Device,
    Exit,
    FindBestDone,
    FoldEnded,
    GpuFaulted,
    NeedMeasured,
    Phase,
    Record,
    RunFindBest,
    Scheduler,
    Start,
    State,
    StopFolds,
    StopRequested,
    Watch,
    place,
)

C2D = [Cell("2d", f) for f in range(5)]
LOW = [Cell("3d_lowres", f) for f in range(5)]
CAS = [Cell("3d_cascade_fullres", f) for f in range(5)]
CONFIGS = ("2d", "3d_lowres", "3d_cascade_fullres")
GIB = float(2**30)


def scheduler(**kw: object) -> Scheduler:
    return Scheduler({"3d_cascade_fullres": "3d_lowres"}, bool(kw.get("find_best", True)),
                     int(kw.get("fold_restarts", 3)), CONFIGS)  # type: ignore[arg-type]


def started(actions: list[object]) -> list[tuple[Cell, str]]:
    return [(a.cell, a.device) for a in actions if isinstance(a, Start)]


def begin(cells: list[Cell], devices: tuple[Device, ...], needs: dict[str, float] | None = None,
          **kw: object) -> tuple[Scheduler, State, list[object]]:
    sch = scheduler()
    state = State(cells={c: CellState() for c in cells})
    state, actions = sch.step(state, Begin(devices, needs or {c: 1.0 for c in CONFIGS}, **kw))  # type: ignore[arg-type]
    return sch, state, actions


def end(sch: Scheduler, s: State, cell: Cell, code: int = 0, reason: str | None = None) -> tuple[State, list[object]]:
    return sch.step(s, FoldEnded(cell, code, reason))  # type: ignore[return-value]


# ---- packing ----

def test_place_spreads_over_devices_then_packs_and_waits_when_full() -> None:
    gpus = [Device("0", 80 * GIB), Device("1", 80 * GIB)]
    needs = {"3d_fullres": 20 * GIB}
    cells = [Cell("3d_fullres", f) for f in range(10)]
    placed = place(cells, gpus, {}, needs)
    assert [d for _, d in placed] == ["0", "1", "0", "1", "0", "1", "0", "1"]  # 4 per 80 GiB GPU, alternating
    assert [c.fold for c, _ in placed] == list(range(8))  # the last two wait for room


def test_place_skips_unhealthy_devices_and_counts_what_runs() -> None:
    devices = [Device("0", 2.0, healthy=False), Device("1", 2.0)]
    assert place([Cell("2d", 0), Cell("2d", 1)], devices, {"1": 1.0}, {"2d": 1.0}) == [(Cell("2d", 0), "1")]


def test_an_h200_holds_several_default_3d_fullres_folds() -> None:
    from supervisor.experiment.devices import estimated_need

    need = estimated_need("nnUNetPlans", 1.25)
    placed = place([Cell("3d_fullres", f) for f in range(5)], [Device("0", 139 * GIB)], {}, {"3d_fullres": need})
    assert len(placed) == 5  # an 8 GB-target fold with overhead and margin is about 12 GiB


# ---- the run ----

def test_cpu_slots_run_that_many_folds_at_once_and_the_next_starts_when_one_ends() -> None:
    sch, s, actions = begin(C2D, (Device("cpu", 2.0),))
    assert started(actions) == [(C2D[0], "cpu"), (C2D[1], "cpu")]
    s, actions = end(sch, s, C2D[0])
    assert started(actions) == [(C2D[2], "cpu")]
    assert s.cells[C2D[0]].status is CellStatus.FINISHED


def test_the_cascade_waits_for_every_lowres_fold_then_the_last_step_runs() -> None:
    sch, s, actions = begin(LOW + CAS, (Device("0", 10.0),))
    assert [c for c, _ in started(actions)] == LOW  # not one cascade fold yet
    for cell in LOW[:4]:
        s, actions = end(sch, s, cell)
        assert started(actions) == []
    s, actions = end(sch, s, LOW[4])
    assert [c for c, _ in started(actions)] == CAS
    for cell in CAS:
        s, actions = end(sch, s, cell)
    assert actions[-1] == RunFindBest(CONFIGS) and s.phase is Phase.FINDING_BEST
    s, actions = sch.step(s, FindBestDone(True, "best configuration found"))
    assert actions[-1] == Exit(0) and s.phase is Phase.DONE


def test_a_fold_that_gives_up_does_not_sink_the_rest_and_the_experiment_is_incomplete() -> None:
    sch, s, _ = begin(C2D, (Device("cpu", 5.0),))
    s, actions = end(sch, s, C2D[2], 1, "no_progress")
    assert s.cells[C2D[2]].status is CellStatus.FAILED and not any(isinstance(a, Exit) for a in actions)
    for cell in (C2D[0], C2D[1], C2D[3]):
        s, actions = end(sch, s, cell)
    s, actions = end(sch, s, C2D[4])
    assert actions[-1] == Exit(1) and not any(isinstance(a, RunFindBest) for a in actions)
    incomplete = next(a for a in actions if isinstance(a, Record) and a.event == "incomplete")
    assert incomplete.fields["folds"] == [{"configuration": "2d", "fold": 2, "status": "failed",
                                           "reason": "no_progress"}]


def test_a_failed_lowres_fold_fails_the_cascade_without_starting_it() -> None:
    sch, s, _ = begin(LOW + CAS, (Device("0", 10.0),))
    s, _ = end(sch, s, LOW[0], 1, "diverged")
    for cell in LOW[1:4]:
        s, _ = end(sch, s, cell)
    s, actions = end(sch, s, LOW[4])
    assert started(actions) == []
    assert all(s.cells[c].status is CellStatus.FAILED for c in CAS)
    assert "one of them did not finish" in str(s.cells[CAS[0]].reason)
    assert actions[-1] == Exit(1)


def test_a_cascade_whose_lowres_stage_finished_before_the_experiment_starts_at_once() -> None:
    _sch, _s, actions = begin(CAS, (Device("0", 10.0),), ready_elsewhere=frozenset({"3d_lowres"}))
    assert [c for c, _ in started(actions)] == CAS


def test_a_gpu_with_a_hardware_fault_leaves_the_pool_and_its_fold_moves() -> None:
    sch, s, actions = begin(C2D[:3], (Device("0", 1.0), Device("1", 1.0)))
    assert started(actions) == [(C2D[0], "0"), (C2D[1], "1")]
    s, actions = end(sch, s, C2D[0], 1, "gpu_fault")  # its supervisor gave up: the GPU is broken
    assert s.cells[C2D[0]].status is CellStatus.WAITING and not s.devices[0].healthy
    assert started(actions) == []  # GPU 1 is busy; GPU 0 is out
    s, actions = end(sch, s, C2D[1])
    assert started(actions) == [(C2D[0], "1")]
    s, actions = sch.step(s, GpuFaulted("1", "Xid 79"))
    assert not s.devices[1].healthy


def test_with_no_healthy_device_left_the_waiting_folds_fail_and_the_run_ends() -> None:
    sch, s, _ = begin(C2D[:2], (Device("0", 1.0),))
    s, actions = end(sch, s, C2D[0], 1, "gpu_fault")
    assert [s.cells[c].reason for c in C2D[:2]] == ["no healthy device left"] * 2
    assert s.phase is Phase.DONE and actions[-1] == Exit(1)


def test_a_restarted_experiment_supervisor_skips_finished_folds_and_follows_running_ones() -> None:
    sch, s, actions = begin(C2D, (Device("cpu", 2.0),), finished=frozenset({C2D[0], C2D[1]}),
                            running={C2D[2]: "cpu"})
    assert Watch(C2D[2]) in actions
    assert started(actions) == [(C2D[3], "cpu")]  # one slot is the followed fold's
    assert s.cells[C2D[0]].status is CellStatus.FINISHED
    s, actions = end(sch, s, C2D[2])  # its lock was released and it had finished
    assert started(actions) == [(C2D[4], "cpu")]


def test_a_crashed_fold_supervisor_is_started_again_a_few_times_then_fails() -> None:
    sch = Scheduler({}, False, 2, ("2d",))
    s, actions = sch.step(State(cells={C2D[0]: CellState()}), Begin((Device("cpu", 1.0),), {"2d": 1.0}))
    for _ in range(2):
        s, actions = sch.step(s, FoldEnded(C2D[0], 70))
        assert started(actions) == [(C2D[0], "cpu")]
    s, actions = sch.step(s, FoldEnded(C2D[0], 70))
    assert s.cells[C2D[0]].status is CellStatus.FAILED and actions[-1] == Exit(1)


def test_a_fold_locked_by_another_supervisor_is_followed_not_started_twice() -> None:
    sch, s, _ = begin(C2D[:1], (Device("cpu", 1.0),))
    s, actions = end(sch, s, C2D[0], 3)
    assert Watch(C2D[0]) in actions and started(actions) == []
    assert s.cells[C2D[0]].status is CellStatus.RUNNING and s.cells[C2D[0]].device is None


def test_a_stop_stops_every_running_fold_and_exits_75_once_they_ended() -> None:
    sch, s, _ = begin(C2D, (Device("cpu", 2.0),))
    s, actions = sch.step(s, StopRequested("SIGTERM"))
    assert StopFolds((C2D[0], C2D[1])) in actions and s.phase is Phase.STOPPING
    s, actions = end(sch, s, C2D[0], 75)
    assert actions[-1] != Exit(75) and started(actions) == []  # nothing new starts while stopping
    s, actions = end(sch, s, C2D[1], 75)
    assert actions[-1] == Exit(75)


def test_a_measured_need_lets_more_folds_share_a_gpu() -> None:
    c3d = [Cell("3d_fullres", f) for f in range(5)]
    sch = Scheduler({}, False, 3, ("3d_fullres",))
    s, actions = sch.step(State(cells={c: CellState() for c in c3d}),
                          Begin((Device("0", 80 * GIB),), {"3d_fullres": 30 * GIB}))
    assert len(started(actions)) == 2
    s, actions = sch.step(s, NeedMeasured("3d_fullres", 12 * GIB))
    assert len(started(actions)) == 3  # 2 x 12 + 3 x 12 = 60 GiB <= 80 (the running ones count at the new need)

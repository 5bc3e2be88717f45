"""Packing by measured GPU memory: what a fold of each configuration really takes (NVML, over a fake here: no GPU on
these machines) raises the planner's estimate when it is above it, and never lowers it."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.experiment.devices import GIB, MEASURE_EVERY_S, PeakWatch, peak_watch, pool
from supervisor.experiment.schedule import CellState, CellStatus, NeedMeasured
from supervisor.experiment.supervise import ExperimentSupervisor
from supervisor.rundir.statefile import StateStore
from tests.unit.experiment.conftest import experiment
from tests.unit.gpu.conftest import FakeNvml


def gpu_experiment(tmp_path: Path, **devices: object) -> ExperimentContext:
    return ExperimentContext.load(experiment(tmp_path, nnunet={"device": "cuda"},
                                             experiment={"configurations": ["2d", "3d_fullres"], "folds": [0, 1],
                                                         "devices": {"gpus": "auto", **devices}}))


def test_a_measured_peak_above_the_estimate_raises_it_and_one_below_never_lowers_it() -> None:
    nvml = FakeNvml(n=1)
    nvml.procs["handle0"] = [[(100, 2 * GIB)], [(100, 10 * GIB), (101, 2 * GIB), (555, 9 * GIB)],
                             [(100, 12 * GIB + GIB // 10)], [(100, 15 * GIB)], [(100, 200 * GIB)]]
    watch = PeakWatch(nvml, ["0"], margin=1.25, needs={"2d": 11.875 * GIB}, largest=80 * GIB)
    # a low sample (a relaunch still starting, a validation after empty_cache) never packs folds tighter
    assert watch.sample([("2d", {100})]) == []
    # the trainer (100) and a child it spawned (101); pid 555 is someone else's
    assert watch.sample([("2d", {100, 101})]) == [("2d", 12 * GIB * 1.25)]
    assert watch.sample([("2d", {100})]) == []  # a rise of under 5 %: not news
    assert watch.sample([("2d", {100})]) == [("2d", 15 * GIB * 1.25)]
    # more than any GPU holds: capped at the largest, where it ran alone (else its configuration waits for ever)
    assert watch.sample([("2d", {100})]) == [("2d", 80 * GIB)]


def test_only_memory_packing_on_one_gpu_a_fold_is_measured(tmp_path: Path) -> None:
    exp = gpu_experiment(tmp_path)
    packing = pool(exp, lambda: FakeNvml(n=2))
    assert packing.by_memory and packing.needs["2d"] == (8 + 1.5) * 1.25 * GIB
    assert peak_watch(exp, packing, lambda: FakeNvml(n=2)) is not None
    counted = gpu_experiment(tmp_path / "n", per_gpu=2)
    assert not pool(counted, lambda: FakeNvml(n=2)).by_memory
    assert peak_watch(counted, pool(counted, lambda: FakeNvml(n=2)), lambda: FakeNvml(n=2)) is None


def test_the_supervisor_measures_its_running_folds_past_their_first_epoch(tmp_path: Path) -> None:
    exp = gpu_experiment(tmp_path)
    sup = ExperimentSupervisor(exp)
    nvml = FakeNvml(n=2)
    pid = os.getpid()  # a live pid, so its tree can be read
    nvml.procs["handle1"] = [[(pid, 3 * GIB)]]
    sup.peaks = PeakWatch(nvml, ["0", "1"], margin=1.25, needs={"2d": 1.0, "3d_fullres": 1.0}, largest=80 * GIB)
    warming, training = Cell("2d", 0), Cell("3d_fullres", 0)
    sup.state = type(sup.state)(cells={warming: CellState(CellStatus.RUNNING, "0"),
                                       training: CellState(CellStatus.RUNNING, "1"),
                                       Cell("2d", 1): CellState()})
    for cell, epoch in ((warming, 0), (training, 2)):
        layout = exp.fold_layout(cell)
        layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
        StateStore(layout.state_file).save({"pid": pid if cell == training else 999_999, "epoch": epoch})
    assert sup._measure(100.0) == [NeedMeasured("3d_fullres", 3 * GIB * 1.25)]
    assert sup._measure(100.0 + MEASURE_EVERY_S / 2) == []  # not yet time to look again


def test_a_gpu_smaller_than_the_estimate_still_takes_one_fold(tmp_path: Path) -> None:
    class Small(FakeNvml):
        def memory_total(self, handle: object) -> int:
            return 11 * GIB  # an 11 GB card: under the 11.9 GiB a default-plans fold is estimated at

    exp = gpu_experiment(tmp_path)
    packing = pool(exp, lambda: Small(n=2))
    assert packing.by_memory and packing.needs["2d"] == 11 * GIB
    assert "0: 1, 1: 1 fold(s)" in packing.line

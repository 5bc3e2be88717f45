"""The experiment's decisions, pure: which cell starts on which device, what a fold supervisor's exit means, when
the experiment is done. `Scheduler.step(state, event) -> (state, actions)`, no processes, no clock.

    Begin ──▶ RUNNING: Start every cell that can start (its stage's prerequisites finished; a device with room)
    RUNNING ──FoldEnded──▶ the cell FINISHED (0) / FAILED (1, 2) / STOPPED (75) / again WAITING (a GPU fault: on
            another device; a supervisor crash, 70: up to fold_restarts) / RUNNING elsewhere (3: another supervisor
            holds it, watched until it lets go); then Start what now can
    RUNNING ──all cells ended──▶ FINDING_BEST (every cell finished and find_best) ──FindBestDone──▶ DONE (0 / 1)
                               ──FindBestDone (with a predict section)──▶ PREDICTING (RunPredict: the chosen
                                 configuration(s) predicted, ensembled, postprocessed) ──PredictDone──▶ DONE (its code)
                               ▶ DONE: 0 every cell finished; 1 incomplete (a cell failed: named, no final step)
    RUNNING ──StopRequested──▶ STOPPING (StopFolds) ──the last running cell ended──▶ DONE (75)
    PREDICTING ──StopRequested──▶ STOPPING (StopPredict) ──PredictDone──▶ DONE (75)
    any ──GpuFaulted──▶ that device leaves the pool (its folds, which give up on it, start again elsewhere)

`place` is the packing rule on its own (pure, reused for SLURM and Kubernetes rendering): cells in order, each on
the healthy device with the most room that fits its need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Union

from supervisor.errors import ExitCode
from supervisor.experiment.context import Cell


class CellStatus(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def ended(self) -> bool:
        return self in (CellStatus.FINISHED, CellStatus.FAILED, CellStatus.STOPPED)


class Phase(str, Enum):
    INIT = "init"
    RUNNING = "running"
    FINDING_BEST = "finding_best"
    PREDICTING = "predicting"
    STOPPING = "stopping"
    DONE = "done"


@dataclass(frozen=True)
class Device:
    """A place folds run: a GPU (capacity in bytes of memory, or in folds) or the CPU (capacity in folds)."""

    name: str  # what CUDA_VISIBLE_DEVICES gets ("0", "GPU-..."), or "cpu"
    capacity: float
    healthy: bool = True


@dataclass(frozen=True)
class CellState:
    status: CellStatus = CellStatus.WAITING
    device: Union[str, None] = None  # where it runs (None: elsewhere, by another supervisor)
    starts: int = 0  # fold supervisors started for it by this experiment supervisor
    crashes: int = 0
    reason: Union[str, None] = None  # why it failed or waits


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.INIT
    cells: Mapping[Cell, CellState] = field(default_factory=dict)
    devices: tuple[Device, ...] = ()
    needs: Mapping[str, float] = field(default_factory=dict)  # configuration -> capacity one of its folds takes
    ready_elsewhere: frozenset[str] = frozenset()  # prerequisite stages already finished outside this experiment
    stop_reason: Union[str, None] = None
    exit_code: Union[int, None] = None


# ---- events ----

@dataclass(frozen=True)
class Begin:
    devices: tuple[Device, ...]
    needs: Mapping[str, float]
    finished: frozenset[Cell] = frozenset()  # already finished on disk: never run again
    running: Mapping[Cell, Union[str, None]] = field(default_factory=dict)  # a live fold supervisor holds it
    ready_elsewhere: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FoldEnded:
    """A fold supervisor exited (or, for one this supervisor did not start, let go of its lock)."""

    cell: Cell
    code: int
    reason: Union[str, None] = None  # its give_up reason (gpu_fault, no_progress, ...), if it gave up


@dataclass(frozen=True)
class GpuFaulted:
    device: str
    message: str


@dataclass(frozen=True)
class NeedMeasured:
    """The peak a fold of this configuration took on its device (GPU memory), with the margin applied."""

    configuration: str
    need: float


@dataclass(frozen=True)
class StopRequested:
    reason: str


@dataclass(frozen=True)
class FindBestDone:
    ok: bool
    message: str


@dataclass(frozen=True)
class PredictDone:
    """The experiment's prediction (nnunet-supervise predict EXPERIMENT) ended with this exit code."""

    code: int
    message: str


Event = Union[Begin, FoldEnded, GpuFaulted, NeedMeasured, StopRequested, FindBestDone, PredictDone]


# ---- actions ----

@dataclass(frozen=True)
class Start:
    cell: Cell
    device: str


@dataclass(frozen=True)
class Watch:
    """Follow a fold that another live supervisor runs, until it lets go of its lock."""

    cell: Cell


@dataclass(frozen=True)
class StopFolds:
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class RunFindBest:
    configurations: tuple[str, ...]


@dataclass(frozen=True)
class RunPredict:
    """Predict with what find_best chose (a supervised pipeline of its own, restartable)."""


@dataclass(frozen=True)
class StopPredict:
    """Stop the prediction resumably."""


@dataclass(frozen=True)
class Record:
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Say:
    message: str


@dataclass(frozen=True)
class Exit:
    code: int


Action = Union[Start, Watch, StopFolds, RunFindBest, RunPredict, StopPredict, Record, Say, Exit]


# ---- the packing rule ----

def place(waiting: Iterable[Cell], devices: Iterable[Device], used: Mapping[str, float],
          needs: Mapping[str, float]) -> list[tuple[Cell, str]]:
    """Cells (in the order given) onto healthy devices: each on the device with the most room left that fits it;
    one that fits nowhere waits (later, smaller cells may still start: nothing is reserved)."""
    room = {d.name: d.capacity - used.get(d.name, 0.0) for d in devices if d.healthy}
    placed = []
    for cell in waiting:
        need = needs.get(cell.configuration, 1.0)
        fits = [name for name, free in room.items() if free >= need - 1e-9]
        if not fits:
            continue
        best = max(fits, key=lambda name: (room[name], -list(room).index(name)))
        room[best] -= need
        placed.append((cell, best))
    return placed


# ---- the scheduler ----

class Scheduler:
    """The experiment's decisions under its settings."""

    def __init__(self, waits_for: Mapping[str, str], find_best: bool, fold_restarts: int,
                 configurations: Iterable[str], predict: bool = False) -> None:
        self.waits_for = dict(waits_for)
        self.find_best = find_best
        self.predict = predict  # a predict section: find_best's choice is predicted after it
        self.fold_restarts = fold_restarts
        self.configurations = tuple(configurations)

    def step(self, s: State, ev: Event) -> tuple[State, list[Action]]:
        if s.phase is Phase.DONE:
            return s, []
        if isinstance(ev, Begin):
            return self._begin(s, ev)
        if isinstance(ev, FoldEnded):
            return self._ended(s, ev)
        if isinstance(ev, GpuFaulted):
            devices = tuple(replace(d, healthy=False) if d.name == ev.device else d for d in s.devices)
            return self._schedule(replace(s, devices=devices), [
                Record("gpu_removed", {"gpu": ev.device, "message": ev.message}),
                Say(f"GPU {ev.device} leaves the pool for the rest of the run: {ev.message}")])
        if isinstance(ev, NeedMeasured):
            if s.needs.get(ev.configuration) == ev.need:
                return s, []
            needs = {**s.needs, ev.configuration: ev.need}
            return self._schedule(replace(s, needs=needs), [
                Record("fold_need", {"configuration": ev.configuration, "need": ev.need})])
        if isinstance(ev, StopRequested):
            return self._stop(s, ev)
        if isinstance(ev, FindBestDone) and s.phase is Phase.FINDING_BEST and ev.ok and self.predict:
            # FINDING_BEST -> PREDICTING
            return replace(s, phase=Phase.PREDICTING), [
                Record("find_best", {"ok": True, "message": ev.message}), Say(ev.message),
                Say("predicting with what find_best chose (nnunet-supervise predict)"), RunPredict()]
        if isinstance(ev, PredictDone) and s.phase in (Phase.PREDICTING, Phase.STOPPING):
            return self._predicted(s, ev)
        if isinstance(ev, FindBestDone) and s.phase is Phase.FINDING_BEST:
            code = ExitCode.FINISHED if ev.ok else ExitCode.GAVE_UP
            # FINDING_BEST -> DONE
            return replace(s, phase=Phase.DONE, exit_code=code), [
                Record("find_best", {"ok": ev.ok, "message": ev.message}),
                Record("finished" if ev.ok else "incomplete", {"cells": len(s.cells), "message": ev.message}),
                Say(ev.message), Exit(code)]
        return s, []

    # PREDICTING (or STOPPING) -> DONE
    def _predicted(self, s: State, ev: PredictDone) -> tuple[State, list[Action]]:
        code = ev.code if ev.code in (ExitCode.FINISHED, ExitCode.STOPPED) else ExitCode.GAVE_UP
        kinds: dict[int, str] = {ExitCode.FINISHED: "finished", ExitCode.STOPPED: "stopped"}
        kind = kinds.get(code, "incomplete")
        return replace(s, phase=Phase.DONE, exit_code=code), [
            Record("predicted", {"code": ev.code, "message": ev.message}),
            Record(kind, {"cells": len(s.cells), "message": ev.message}), Say(ev.message), Exit(code)]

    # INIT -> RUNNING
    def _begin(self, s: State, ev: Begin) -> tuple[State, list[Action]]:
        cells: dict[Cell, CellState] = {}
        actions: list[Action] = []
        for cell, old in s.cells.items():
            if cell in ev.finished:
                cells[cell] = CellState(CellStatus.FINISHED)
            elif cell in ev.running:
                cells[cell] = CellState(CellStatus.RUNNING, device=ev.running[cell])
                actions.append(Watch(cell))
            else:
                cells[cell] = replace(old, status=CellStatus.WAITING, device=None)
        s = replace(s, phase=Phase.RUNNING, cells=cells, devices=ev.devices, needs=dict(ev.needs),
                    ready_elsewhere=ev.ready_elsewhere)
        head = [Record("experiment_started", {
            "cells": len(cells), "finished": len(ev.finished), "running_elsewhere": len(ev.running),
            "devices": [{"name": d.name, "capacity": d.capacity} for d in ev.devices]})]
        return self._schedule(s, head + actions)

    def _ended(self, s: State, ev: FoldEnded) -> tuple[State, list[Action]]:
        old = s.cells.get(ev.cell)
        if old is None or old.status is not CellStatus.RUNNING:
            return s, []
        fields: dict[str, Any] = {**ev.cell.fields(), "code": ev.code,
                                  "device": old.device}
        if ev.reason:
            fields["reason"] = ev.reason
        record = Record("fold_ended", fields)
        if ev.code == ExitCode.FINISHED:
            new = replace(old, status=CellStatus.FINISHED, reason=None)
            say = f"{ev.cell.name} finished"
        elif ev.code == ExitCode.GAVE_UP and ev.reason == "gpu_fault" and s.phase is Phase.RUNNING:
            # not the fold's fault: it starts again, elsewhere (the GPU leaves the pool)
            new = replace(old, status=CellStatus.WAITING, device=None, reason="its GPU had a hardware fault")
            s = replace(s, devices=tuple(replace(d, healthy=False) if d.name == old.device else d for d in s.devices))
            say = f"{ev.cell.name} gave up on GPU {old.device} (hardware fault): it will start on another device"
        elif ev.code in (ExitCode.GAVE_UP, ExitCode.USAGE):
            new = replace(old, status=CellStatus.FAILED, reason=ev.reason or f"exit {ev.code}")
            say = f"{ev.cell.name} gave up ({new.reason}); the other folds go on"
        elif ev.code == ExitCode.STOPPED:
            new = replace(old, status=CellStatus.STOPPED, reason="stopped on request")
            say = f"{ev.cell.name} stopped resumably"
        elif ev.code == ExitCode.LOCKED:
            new = replace(old, device=None, reason="run by another supervisor")  # still RUNNING: watched
            return replace(s, cells={**s.cells, ev.cell: new}), [
                record, Say(f"{ev.cell.name} is run by another live supervisor: following it"), Watch(ev.cell)]
        else:  # 70 (a crash of the fold supervisor), a signal: start it again, a few times
            crashes = old.crashes + 1
            if crashes > self.fold_restarts or s.phase is not Phase.RUNNING:
                new = replace(old, status=CellStatus.FAILED, crashes=crashes,
                              reason=f"its supervisor ended with {ev.code} {crashes} time(s)")
            else:
                new = replace(old, status=CellStatus.WAITING, device=None, crashes=crashes,
                              reason=f"its supervisor ended with {ev.code}")
            say = f"{ev.cell.name}: {new.reason}" + ("; starting it again" if new.status is CellStatus.WAITING else "")
        s = replace(s, cells={**s.cells, ev.cell: new})
        return self._schedule(s, [record, Say(say)])

    def _stop(self, s: State, ev: StopRequested) -> tuple[State, list[Action]]:
        running = tuple(c for c, st in s.cells.items() if st.status is CellStatus.RUNNING)
        record = Record("stop_requested", {"reason": ev.reason})
        if s.phase is Phase.STOPPING:
            return s, []
        if s.phase is Phase.PREDICTING:
            # PREDICTING -> STOPPING: the prediction stops resumably; the experiment exits once it ended
            return replace(s, phase=Phase.STOPPING, stop_reason=ev.reason), [
                record, Say(f"{ev.reason}: stopping the prediction resumably"), StopPredict()]
        if s.phase in (Phase.INIT, Phase.RUNNING) and running:
            # RUNNING -> STOPPING: every fold stops resumably; the experiment exits 75 once the last one ended
            return replace(s, phase=Phase.STOPPING, stop_reason=ev.reason), [
                record, Say(f"{ev.reason}: stopping {len(running)} fold(s) resumably"), StopFolds(running)]
        # nothing runs (or only the final step): stop now
        return replace(s, phase=Phase.DONE, stop_reason=ev.reason, exit_code=ExitCode.STOPPED), [
            record, Say(f"{ev.reason}: stopped; the same command resumes the experiment"), Exit(ExitCode.STOPPED)]

    def _prerequisites(self, s: State, cell: Cell) -> tuple[bool, str | None]:
        """(may start now, why never): a stage waits until every fold of the stage it needs finished."""
        earlier = self.waits_for.get(cell.configuration)
        if earlier is None or (earlier if cell.study is None else f"{cell.study}/{earlier}") in s.ready_elsewhere:
            return True, None
        # the cascade per trainer x plans: the low-resolution folds of its own trainer and plans
        others = [st for c, st in s.cells.items() if c.configuration == earlier and c.study == cell.study]
        if not others:
            return False, f"needs every fold of {earlier}, which is not in this experiment nor finished"
        if any(st.status in (CellStatus.FAILED, CellStatus.STOPPED) for st in others):
            return False, f"needs every fold of {earlier}, and one of them did not finish"
        return all(st.status is CellStatus.FINISHED for st in others), None

    def _schedule(self, s: State, actions: list[Action]) -> tuple[State, list[Action]]:
        """Start what can start; fail what never can; end the experiment when nothing is left to run."""
        if s.phase is Phase.STOPPING:
            if not any(st.status is CellStatus.RUNNING for st in s.cells.values()):
                # STOPPING -> DONE
                s = replace(s, phase=Phase.DONE, exit_code=ExitCode.STOPPED)
                return s, [*actions, Say("every fold stopped; the same command resumes the experiment"),
                           Exit(ExitCode.STOPPED)]
            return s, actions
        if s.phase is not Phase.RUNNING:
            return s, actions
        cells = dict(s.cells)
        ready = []
        for cell, st in sorted(cells.items(), key=lambda kv: (self._order(kv[0]), str(kv[0].fold))):
            if st.status is not CellStatus.WAITING:
                continue
            may, never = self._prerequisites(s, cell)
            if never:
                cells[cell] = replace(st, status=CellStatus.FAILED, reason=never)
                actions.append(Record("fold_skipped", {**cell.fields(),
                                                       "reason": never}))
            elif may:
                ready.append(cell)
        healthy = [d for d in s.devices if d.healthy]
        used: dict[str, float] = {}
        for cell, st in cells.items():
            if st.status is CellStatus.RUNNING and st.device is not None:
                used[st.device] = used.get(st.device, 0.0) + s.needs.get(cell.configuration, 1.0)
        for cell, device in place(ready, s.devices, used, s.needs):
            cells[cell] = replace(cells[cell], status=CellStatus.RUNNING, device=device, starts=cells[cell].starts + 1,
                                  reason=None)
            actions += [Record("fold_started", {**cell.fields(),
                                                "device": device}), Start(cell, device)]
        if not healthy:
            for cell, st in cells.items():
                if st.status is CellStatus.WAITING:
                    cells[cell] = replace(st, status=CellStatus.FAILED, reason="no healthy device left")
        s = replace(s, cells=cells)
        if any(not st.status.ended for st in cells.values()):
            return s, actions
        return self._end(s, actions)

    def _end(self, s: State, actions: list[Action]) -> tuple[State, list[Action]]:
        unfinished = {c: st for c, st in s.cells.items() if st.status is not CellStatus.FINISHED}
        if not unfinished:
            if self.find_best:
                # RUNNING -> FINDING_BEST
                return replace(s, phase=Phase.FINDING_BEST), [
                    *actions, Say("every fold finished: nnUNetv2_find_best_configuration"),
                    RunFindBest(self.configurations)]
            return replace(s, phase=Phase.DONE, exit_code=ExitCode.FINISHED), [
                *actions, Record("finished", {"cells": len(s.cells)}), Say("every fold finished"),
                Exit(ExitCode.FINISHED)]
        failed = {c: st for c, st in unfinished.items() if st.status is CellStatus.FAILED}
        code = ExitCode.GAVE_UP if failed else ExitCode.STOPPED
        names = "; ".join(f"{c.name}: {st.reason}" for c, st in sorted(unfinished.items()))
        # RUNNING -> DONE (incomplete)
        return replace(s, phase=Phase.DONE, exit_code=code), [
            *actions, Record("incomplete", {"folds": [{**c.fields(),
                                                      "status": st.status.value, "reason": st.reason}
                                                     for c, st in sorted(unfinished.items())]}),
            Say(f"incomplete, no final step: {names}. The same command retries only these."), Exit(code)]

    def _order(self, cell: Cell) -> int:
        return self.configurations.index(cell.configuration) if cell.configuration in self.configurations else 99

"""The experiment supervisor: starts each cell as a fold supervisor of its own (`run FILE --configuration C
--fold F`), follows them, and carries out what the scheduler decides. It decides nothing itself.

Each fold keeps its own process, lock, state.json, events, checkpoint safety and restart policy. The fold
supervisors run in sessions of their own: if this supervisor is killed they train on, and the next one finds them
by their locks and follows them (a fold never has two trainers: its lock says so). One queue, one main thread,
as in the fold supervisor: waiter threads, the find_best job and signal handlers only put items on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import psutil

from supervisor.command import helper_env
from supervisor.deploy.sdnotify import Notifier
from supervisor.errors import ExitCode, RunDirError
from supervisor.experiment import findbest
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.experiment.devices import MEASURE_EVERY_S, PeakWatch, peak_watch, pool
from supervisor.experiment.schedule import (
    Action,
    Begin,
    CellState,
    CellStatus,
    Event,
    Exit,
    FindBestDone,
    FoldEnded,
    NeedMeasured,
    PredictDone,
    Record,
    RunFindBest,
    RunPredict,
    Say,
    Scheduler,
    Start,
    State,
    StopFolds,
    StopPredict,
    StopRequested,
    Watch,
)
from supervisor.observe.control import request_stop

if TYPE_CHECKING:
    from supervisor.experiment.metrics import ExperimentMetrics
from supervisor.rundir.eventlog import EventLog, read_events
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from supervisor.stopsignals import stop_signals

log = logging.getLogger("nnunet_supervise")

CASCADE_FOLDS = (0, 1, 2, 3, 4)  # a cascade's training needs the previous stage's predictions of every case


Spawner = Callable[[list[str], dict[str, str], Path], subprocess.Popen[bytes]]


def spawn_fold(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A fold supervisor in a session of its own: a terminal's Ctrl-C or this supervisor's death does not reach it;
    stops are forwarded (SIGTERM, a resumable stop)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)


def write_splits_ahead(exp: ExperimentContext) -> str | None:
    """splits_final.json before folds start together (nnU-Net's own write of it races: see trainer/splits.py).

    Called by the experiment supervisor and by every cell started alone (a SLURM array task, a Kubernetes pod):
    two cells racing here both write the same content atomically. Returns what was done, None when nothing was."""
    base = exp.preprocessed
    if (base / "splits_final.json").exists() or all(c.fold == "all" for c in exp.cells):
        return None
    data = base / exp.data_identifiers[exp.configurations[0]]
    r = subprocess.run([sys.executable, "-m", "supervisor.trainer.splits", str(base), str(data)],
                       env=helper_env(exp.run(exp.cells[0])), capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL)
    if r.returncode == 0:
        log.info("%s", r.stdout.strip())
        return r.stdout.strip()
    # the first fold then writes it itself, as without us
    log.warning("could not write splits_final.json ahead (%s); nnU-Net writes it itself",
                (r.stderr.strip().splitlines() or ["no output"])[-1])
    return None


class ExperimentSupervisor:
    """Runs one experiment until every cell ended; returns the exit code (0, 1, 75)."""

    def __init__(self, exp: ExperimentContext, *, tick_s: float = 2.0, spawn: Spawner = spawn_fold,
                 notifier: Notifier | None = None, wall: Callable[[], float] = time.time) -> None:
        self.exp, self.tick_s, self.spawn, self.wall = exp, tick_s, spawn, wall
        x = exp.spec.experiment
        self.scheduler = Scheduler(exp.waits_for, x.find_best, x.fold_restarts, exp.configurations,
                                   predict=exp.predicts)
        self.queue: queue.SimpleQueue[Union[Event, tuple[str, Any]]] = queue.SimpleQueue()
        self.layout = exp.layout
        self.events = EventLog(self.layout.events_file, wall)
        self.store = StateStore(self.layout.state_file)
        self.notifier = notifier or Notifier()
        self.children: dict[Cell, subprocess.Popen[bytes]] = {}
        self.watched: set[Cell] = set()
        self.find_best_proc: subprocess.Popen[bytes] | None = None
        self.predict_proc: subprocess.Popen[bytes] | None = None
        self.predict_watched = False  # a prediction another (earlier) experiment supervisor started runs on
        self.state = State(cells={c: CellState() for c in exp.cells})
        self._started = wall()
        self.peaks: PeakWatch | None = None  # GPU memory packing: what the folds really take, measured
        self._measured_at = -MEASURE_EVERY_S
        m = exp.spec.metrics
        self.metrics: ExperimentMetrics | None = None
        if m.port is not None or m.textfile is not None:
            from supervisor.experiment.metrics import ExperimentMetrics

            self.metrics = ExperimentMetrics(exp)

    # ---- the loop ----

    def run(self) -> int:
        lock = RunLock(self.layout.lock_file)
        try:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # LockedError (exit 3): another live experiment supervisor holds this experiment
        except OSError as exc:
            raise RunDirError(f"cannot use the experiment's folder {self.layout.root}: {exc}") from None
        try:
            packing = pool(self.exp)
            log.info("experiment %s: %d cell(s); %s", self.exp.config_path, len(self.exp.cells), packing.line)
            self.peaks = peak_watch(self.exp, packing)
            self._ensure_splits()
            begin = self._begin(tuple(packing.devices), packing.needs)
            with stop_signals(lambda name: self.queue.put(StopRequested(name))):
                self.notifier.ready(f"supervising experiment {self.exp.config_path}")
                code = self._loop(begin)
                self.notifier.stopping(f"experiment: exit {code}")
                return code
        finally:
            self._leave()
            if self.metrics is not None:
                self.metrics.close()
            lock.release()

    def _loop(self, first: Event) -> int:
        pending: list[Event] = [first]
        while True:
            if not pending:
                pending = self._next()
            for ev in pending:
                self.state, actions = self.scheduler.step(self.state, ev)
                self._persist()
                for action in actions:
                    if isinstance(action, Exit):
                        self._persist()
                        return action.code
                    self._perform(action)
            pending = []
            self.notifier.watchdog(time.monotonic())

    def _next(self) -> list[Event]:
        try:
            item = self.queue.get(timeout=self.tick_s)
        except queue.Empty:
            return self._look()
        if isinstance(item, tuple):  # ("ended", cell, code) from a waiter thread
            _, payload = item
            return [payload]
        return [item]

    def _look(self) -> list[Event]:
        """Every tick: folds that other supervisors run, when they let go of their locks; now and then the GPU memory
        the running folds take."""
        ended: list[Event] = self._measure(time.monotonic())
        if self.predict_watched and not RunLock(self.exp.predict_layout().lock_file).is_held_elsewhere():
            self.predict_watched = False  # the earlier one ended: run it again (what it finished is kept)
            self._predict()
        for cell in sorted(self.watched):
            layout = self.exp.fold_layout(cell)
            if RunLock(layout.lock_file).is_held_elsewhere():
                continue
            self.watched.discard(cell)
            state = StateStore(layout.state_file).load()
            code = state.get("exit_code")
            if layout.is_finished():
                code = ExitCode.FINISHED
            elif not isinstance(code, int):
                code = ExitCode.CRASHED  # it died without saying: start it again (it resumes)
            ended.append(FoldEnded(cell, code, give_up_reason(layout.events_file) if code == 1 else None))
        return ended

    def _measure(self, now: float) -> list[Event]:
        """NeedMeasured for each configuration whose folds were found to take more GPU memory than the scheduler
        counts (see PeakWatch): a running fold's trainer tree, by the pid its supervisor records in state.json."""
        if self.peaks is None or now - self._measured_at < MEASURE_EVERY_S:
            return []
        self._measured_at = now
        trees = []
        for cell, st in self.state.cells.items():
            if st.status is not CellStatus.RUNNING:
                continue
            state = StateStore(self.exp.fold_layout(cell).state_file).read().data
            pid, epoch = state.get("pid"), state.get("epoch")
            if isinstance(pid, int) and pid > 0 and isinstance(epoch, int) and epoch >= 1:
                trees.append((cell.configuration, _tree(pid)))
        try:
            changed = self.peaks.sample(trees)
        except Exception as exc:  # NVML went away mid-run: keep packing by what is known
            log.warning("GPU memory of the folds no longer measured (%s)", exc)
            self.peaks = None
            return []
        for configuration, need in changed:
            log.info("a %s fold takes %.1f GiB of GPU memory (measured, with the margin): packing by that",
                     configuration, need / 2**30)
        return [NeedMeasured(c, need) for c, need in changed]

    # ---- facts ----

    def _begin(self, devices: tuple[Any, ...], needs: dict[str, float]) -> Begin:
        finished, running = set(), {}
        for cell in self.exp.cells:
            layout = self.exp.fold_layout(cell)
            if layout.is_finished():
                finished.add(cell)
            elif RunLock(layout.lock_file).is_held_elsewhere():
                running[cell] = _device_of(RunLock(layout.lock_file).holder(), self.exp.spec.nnunet.device)
        ready_elsewhere = set()
        for study in self.exp.studies:  # an earlier stage not trained here but finished before (per trainer x plans)
            one = Cell("", 0, study.trainer, study.plans) if self.exp.is_study else Cell("", 0)
            for stage in set(study.waits_for.values()) - set(study.configurations):
                if all(self.exp.fold_layout(one.sibling(stage, f)).is_finished() for f in CASCADE_FOLDS):
                    ready_elsewhere.add(stage if one.study is None else f"{one.study}/{stage}")
        if running:
            log.info("found %d fold(s) run by live supervisors (from an earlier start): following them: %s",
                     len(running), ", ".join(c.name for c in sorted(running)))
        return Begin(devices, needs, frozenset(finished), running, frozenset(ready_elsewhere))

    def _ensure_splits(self) -> None:
        said = write_splits_ahead(self.exp)
        if said is not None:
            self.events.record("splits", message=said)

    # ---- actions ----

    def _perform(self, action: Action) -> None:
        if isinstance(action, Record):
            self.events.record(action.event, **action.fields)
        elif isinstance(action, Say):
            log.info("%s", action.message)
        elif isinstance(action, Start):
            self._start(action.cell, action.device)
        elif isinstance(action, Watch):
            self.watched.add(action.cell)
        elif isinstance(action, StopFolds):
            self._stop(action.cells)
        elif isinstance(action, RunFindBest):
            self._find_best(list(action.configurations))
        elif isinstance(action, RunPredict):
            self._predict()
        elif isinstance(action, StopPredict):
            self._stop_predict()

    def _start(self, cell: Cell, device: str) -> None:
        argv = [sys.executable, "-m", "supervisor", "run", str(self.exp.config_path), "--configuration",
                cell.configuration, "--fold", str(cell.fold),
                *([] if cell.trainer is None else ["--trainer", cell.trainer, "--plans", str(cell.plans)])]
        env = dict(os.environ)
        if self.exp.spec.nnunet.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = device
        try:
            popen = self.spawn(argv, env, self.layout.fold_log(cell))
        except OSError as exc:
            self.queue.put(("ended", FoldEnded(cell, ExitCode.CRASHED, f"could not start: {exc}")))
            return
        self.children[cell] = popen
        log.info("%s started on %s (fold supervisor pid %d; its log: %s)", cell.name, device, popen.pid,
                 self.layout.fold_log(cell))

        def wait() -> None:
            code = popen.wait()
            reason = give_up_reason(self.exp.fold_layout(cell).events_file) if code == ExitCode.GAVE_UP else None
            self.queue.put(("ended", FoldEnded(cell, code, reason)))

        threading.Thread(target=wait, name=f"wait-{cell.name}", daemon=True).start()

    def _stop(self, cells: tuple[Cell, ...]) -> None:
        for cell in cells:
            popen = self.children.get(cell)
            if popen is not None and popen.poll() is None:
                popen.send_signal(signal.SIGTERM)  # a resumable stop: it saves (cooperative) and exits 75
            elif cell in self.watched:
                try:
                    request_stop(self.exp.fold_layout(cell), reason="experiment stopped")
                except Exception as exc:  # gone meanwhile, or not ours to signal: its lock will tell
                    log.warning("could not stop %s: %s", cell.name, exc)

    def _find_best(self, configurations: list[str]) -> None:
        argv = findbest.find_best_argv(self.exp, configurations)
        if argv is None:
            self.queue.put(FindBestDone(True, "every fold finished; no numbered folds, so no find_best"))
            return
        if findbest.find_best_done(self.exp, configurations):
            self.queue.put(FindBestDone(True, f"find_best's choice is kept from before ({findbest.INFORMATION} in "
                                              f"{self.layout.root}, newer than every fold, made over these models and "
                                              "folds): not run again"))
            return
        env = helper_env(self.exp.run(self.exp.cells[0]))
        out = self.layout.root / "find_best.log"

        def work() -> None:
            try:
                with open(out, "ab") as f:
                    self.find_best_proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                                           stdin=subprocess.DEVNULL, start_new_session=True)
                    code = self.find_best_proc.wait()
                kept = findbest.keep_outputs(self.exp) if code == 0 else []
                ok = code == 0 and bool(kept)
                message = (f"best configuration found; {', '.join(p.name for p in kept)} in {self.layout.root}"
                           if ok else f"nnUNetv2_find_best_configuration failed (exit {code}); see {out}")
            except OSError as exc:
                ok, message = False, f"nnUNetv2_find_best_configuration could not run: {exc}"
            self.queue.put(FindBestDone(ok, message))

        log.info("running %s (log: %s)", " ".join(argv), out)
        threading.Thread(target=work, name="find-best", daemon=True).start()

    def _predict(self) -> None:
        """`nnunet-supervise predict EXPERIMENT` as a child in a session of its own (like a fold supervisor: it
        predicts on if this supervisor is killed, and the next one follows it by its lock)."""
        layout = self.exp.predict_layout()
        if RunLock(layout.lock_file).is_held_elsewhere():
            log.info("the prediction is run by a live supervisor (from an earlier start): following it")
            self.predict_watched = True
            return
        argv = [sys.executable, "-m", "supervisor", "predict", str(self.exp.config_path)]
        out = self.layout.root / "predict.log"
        try:
            popen = self.spawn(argv, dict(os.environ), out)
        except OSError as exc:
            self.queue.put(PredictDone(ExitCode.CRASHED, f"the prediction could not start: {exc}"))
            return
        self.predict_proc = popen
        log.info("prediction started (pid %d; its log: %s; its run directory: %s)", popen.pid, out,
                 layout.supervisor_dir)

        def wait() -> None:
            code = popen.wait()
            words: dict[int, str] = {ExitCode.FINISHED: "every input case has a verified, postprocessed output",
                     ExitCode.STOPPED: "the prediction stopped resumably",
                     ExitCode.GAVE_UP: "the prediction is incomplete (cases failed or it gave up)"}
            message = f"{words.get(code, f'the prediction failed (exit {code})')}; see {out}"
            self.queue.put(PredictDone(code, message))

        threading.Thread(target=wait, name="wait-predict", daemon=True).start()

    def _stop_predict(self) -> None:
        popen = self.predict_proc
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        elif self.predict_watched:
            self.predict_watched = False
            try:
                request_stop(self.exp.predict_layout(), reason="experiment stopped")
            except Exception as exc:  # gone meanwhile
                log.warning("could not stop the prediction: %s", exc)
            self.queue.put(PredictDone(ExitCode.STOPPED, "the prediction was asked to stop resumably"))

    def _leave(self) -> None:
        """On any way out: the fold supervisors we started and did not stop keep training (they are resumable on
        their own); only find_best, which is cheap to redo, is stopped."""
        proc = self.find_best_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self.peaks is not None:
            with contextlib.suppress(Exception):
                self.peaks.nvml.shutdown()

    # ---- state.json ----

    def _persist(self) -> None:
        s = self.state
        self.store.save({
            "schema": 1,
            "state": s.phase.value,
            "exit_code": s.exit_code,
            "supervisor_pid": os.getpid(),
            "started_ts": self._started,
            "config": str(self.exp.config_path),
            "stop_reason": s.stop_reason,
            "devices": [{"name": d.name, "capacity": d.capacity, "healthy": d.healthy} for d in s.devices],
            "cells": [{**c.fields(), "status": st.status.value,
                       "device": st.device, "starts": st.starts, "reason": st.reason}
                      for c, st in sorted(s.cells.items())],
        })
        if self.metrics is not None:
            self.metrics.update(s, self.wall())
        running = sum(st.status is CellStatus.RUNNING for st in s.cells.values())
        done = sum(st.status is CellStatus.FINISHED for st in s.cells.values())
        self.notifier.status(f"{s.phase.value}: {done}/{len(s.cells)} folds finished, {running} running")


def give_up_reason(events_file: Path) -> str | None:
    """Why a fold supervisor gave up: its last give_up event's reason."""
    reason = None
    for e in read_events(events_file, warn=False):
        if e["event"] == "give_up" and isinstance(e.get("reason"), str):
            reason = e["reason"]
    return reason


def _device_of(holder: dict[str, Any] | None, kind: str) -> str | None:
    """The device a live fold supervisor was given (its CUDA_VISIBLE_DEVICES), from its environment; None when it
    cannot be told (it then takes no room in the pool)."""
    if kind != "cuda":
        return kind
    pid = (holder or {}).get("pid")
    if not isinstance(pid, int):
        return None
    try:
        env = psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return None
    return env.get("CUDA_VISIBLE_DEVICES", "0")


def stop_everything(exp: ExperimentContext) -> list[str]:
    """`stop EXPERIMENT` without a live experiment supervisor: every live fold supervisor, resumably."""
    stopped = []
    for cell in exp.cells:
        layout = exp.fold_layout(cell)
        if RunLock(layout.lock_file).is_held_elsewhere():
            request_stop(layout, reason="nnunet-supervise stop (experiment)")
            stopped.append(cell.name)
    if exp.predicts and RunLock(exp.predict_layout().lock_file).is_held_elsewhere():
        request_stop(exp.predict_layout(), reason="nnunet-supervise stop (experiment)")
        stopped.append("the prediction")
    return stopped



def _tree(pid: int) -> set[int]:
    """pid and its descendants now (a fold's CUDA context lives in the trainer; its workers hold none, but a
    trainer that spawns CUDA children is counted whole)."""
    try:
        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except (psutil.Error, OSError):
        return {pid}

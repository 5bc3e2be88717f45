"""An experiment's last mile: what find_best chose, predicted, ensembled and postprocessed, each step a stage on
the one engine (supervisor.daemon.runner), in order, as inference_instructions.txt says to run them.

    <predict.output>/                      the final segmentations (postprocessed), one per input case
    <predict.output>/supervisor/           the prediction's run directory: the last step's (the postprocessing,
                                           which writes the final segmentations) state.json, attempt logs and
                                           quarantine/; events.jsonl, with every step's output_corrupt and
                                           case_failed copied in; pipeline.json and pipeline.lock, the steps'
        models/<trainer__plans__conf>/     each model's prediction (with --save_probabilities for an ensemble),
                                           its own supervisor/ run directory inside
        ensemble/                          the ensemble of two models (its supervisor/ inside)

Restartable at any point: every step verifies what exists before it launches (torn outputs quarantined and made
again, verified ones kept), so a step that finished takes a verification and nothing more. A case a model could not
predict (set aside as poison) is left out of the steps after it; the pipeline then ends with exit 1 naming it.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from supervisor.daemon.process import ProcessOps
from supervisor.daemon.runner import Engine
from supervisor.deploy import slurm
from supervisor.errors import ConfigError, ExitCode, RunDirError
from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.findbest import INFORMATION
from supervisor.layout import PipelineLayout, PredictLayout
from supervisor.observe.prediction import PARTS_STEP
from supervisor.pipeline.parts import PartsRun
from supervisor.pipeline.parts import verdict as parts_verdict
from supervisor.rundir.eventlog import EventLog, read_events
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore
from supervisor.stages.combining.stage import CombineJob, CombineStage
from supervisor.stages.prediction.chosen import Chosen, Model, read_chosen
from supervisor.stages.prediction.context import PredictContext, folders
from supervisor.stages.prediction.parts import Part, parts_wanted
from supervisor.stages.prediction.stage import PredictionStage
from supervisor.stopsignals import stop_signals

log = logging.getLogger("nnunet_supervise")

COPIED = ("output_corrupt", "case_failed")


@dataclass(frozen=True)
class Step:
    """One stage of the pipeline: its name, what it writes into, and its run directory."""

    name: str  # "predict 3d_fullres", "ensemble", "postprocess"
    kind: str  # "predict" | "ensemble" | "postprocess"
    output: Path
    run_dir: Path
    model: Model | None = None
    prev_stage: Path | None = None  # a cascade's low-resolution segmentations


@dataclass(frozen=True)
class Plan:
    chosen: Chosen
    steps: tuple[Step, ...]


def relocate(path: Path, results: Path, dataset: str) -> Path:
    """A path find_best wrote, under this machine's nnUNet_results (the file may come from another node, where the
    results folder was mounted elsewhere): the part after <dataset>/, when the path as written is not there."""
    if path.exists() or dataset not in path.parts:
        return path
    i = len(path.parts) - 1 - path.parts[::-1].index(dataset)
    return results.joinpath(dataset, *path.parts[i + 1:])


def plan(exp: ExperimentContext, output: Path) -> Plan:
    """The steps for what find_best chose (its inference_information.json, kept in the experiment's folder)."""
    chosen = read_chosen(exp.layout.root / INFORMATION)
    chosen = Chosen(chosen.models, chosen.folds,
                    relocate(chosen.postprocessing_file, exp.paths.results, exp.dataset_name),
                    relocate(chosen.plans_file, exp.paths.results, exp.dataset_name))
    nn = exp.spec.nnunet
    studies = exp.spec.studies  # a choice among the experiment's trainers x plans
    foreign = [m.name for m in chosen.models if (m.trainer, m.plans) not in studies]
    if foreign:
        ours = (f"trainer {nn.trainer} and plans {nn.plans}" if len(studies) == 1 else
                "trainers x plans " + ", ".join(f"{t}__{p}" for t, p in studies))
        raise ConfigError([f"{INFORMATION} chose {', '.join(foreign)}, not of this experiment's {ours}: run the "
                           "experiment's find_best again"], str(exp.config_path))
    root = PredictLayout(output).supervisor_dir
    steps: list[Step] = []
    made: set[str] = set()
    for m in chosen.models:
        prev = exp.previous_stage(m.configuration)
        prev_out = None
        if prev is not None:  # the cascade: its low-resolution model predicts the same input first
            pm = Model(m.trainer, m.plans, prev)
            prev_out = root / "models" / pm.name
            if pm.name not in made:
                steps.append(Step(f"predict {prev}", "predict", prev_out, prev_out / "supervisor", pm))
                made.add(pm.name)
        out = root / "models" / m.name
        if m.name not in made:
            steps.append(Step(f"predict {m.configuration}", "predict", out, out / "supervisor", m, prev_out))
            made.add(m.name)
    if chosen.ensemble:
        steps.append(Step("ensemble", "ensemble", root / "ensemble", root / "ensemble" / "supervisor"))
    steps.append(Step("postprocess", "postprocess", output, root))
    return Plan(chosen, tuple(steps))


class PredictionPipeline:
    """Runs the plan's steps in order, each on the engine; returns the exit code (contract: "Prediction")."""

    def __init__(self, exp: ExperimentContext, input_dir: Path, output: Path,
                 engine: Callable[[Any, ProcessOps], int] | None = None, wall: Callable[[], float] = time.time,
                 part: Part | None = None, retry_failed: bool = False, devices: Sequence[str | None] | None = None,
                 parts_run: Callable[[PartsRun], dict[Part, int]] = PartsRun.run) -> None:
        self.exp, self.input, self.output, self.wall = exp, input_dir, output, wall
        self.part, self.retry_failed, self.parts_run = part, retry_failed, parts_run
        whole = PipelineLayout(output)
        self.layout = whole if part is None else PipelineLayout(output, whole.supervisor_dir / part.name)
        self.plan = plan(exp, output)
        if part is not None:  # a part predicts its cases with each model; the whole ensembles and postprocesses
            self.plan = Plan(self.plan.chosen, tuple(replace(s, run_dir=s.run_dir / part.name)
                                                     for s in self.plan.steps if s.kind == "predict"))
        # one part per device: the parts run at once, each its own supervisor, before the whole's steps
        self.devices: Sequence[str | None] = (devices if devices is not None else part_devices(exp)) \
            if part is None else [None]
        self.events = EventLog(self.layout.events_file, wall)
        self.store = StateStore(self.layout.state_file)
        self.engine = engine or (lambda stage, ops: Engine(stage, ops).run())
        self.failed: dict[str, str] = {}  # case -> why, from every step so far
        self.done: dict[str, dict[str, Any]] = {}  # step name -> its summary
        self.current: str | None = None
        self._stop: str | None = None
        self._started = wall()

    # ---- the stages ----

    def _config(self, model: Model) -> Any:
        return self.exp.spec.fold_config(model.configuration, self.plan.chosen.folds[0], model.trainer, model.plans)

    def stage(self, step: Step, ops: ProcessOps) -> PredictionStage:
        """The engine's stage for one step (ConfigError: a model's checkpoint or dataset.json is missing)."""
        chosen = self.plan.chosen
        layout = PredictLayout(step.output, step.run_dir)
        if step.kind == "predict":
            assert step.model is not None
            pctx = PredictContext.for_model(self.exp.config_path, self._config(step.model), self.input, step.output,
                                            list(chosen.folds), save_probabilities=True if chosen.ensemble else None,
                                            prev_stage=step.prev_stage, layout=layout, part=self.part)
            stage = PredictionStage(replace(pctx, retry_failed=self.retry_failed), ops)
        else:
            first = chosen.models[0]
            model_out = self.layout.supervisor_dir / "models"
            sources = tuple(model_out / m.name for m in chosen.models) if step.kind == "ensemble" else \
                (self.layout.supervisor_dir / "ensemble",) if chosen.ensemble else (model_out / first.name,)
            # the combined outputs are segmentations only, whatever the models saved
            pctx = PredictContext.for_model(self.exp.config_path, self._config(first), self.input, step.output,
                                            list(chosen.folds), save_probabilities=False, layout=layout)
            job = CombineJob("ensemble" if step.kind == "ensemble" else "postprocess", sources, chosen.plans_file,
                             chosen.postprocessing_file if step.kind == "postprocess" else None)
            stage = CombineStage(pctx, job, ops)
        stage.failed.update(self.failed)  # what a step before set aside is not combined
        return stage

    # ---- the run ----

    def run(self) -> int:
        lock = RunLock(self.layout.lock_file)
        try:
            self.layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # LockedError (exit 3): another live supervisor runs this prediction
        except OSError as exc:
            raise RunDirError(f"cannot use the prediction's folder {self.layout.supervisor_dir}: {exc}") from None
        try:
            with stop_signals(self._on_stop):
                return self._run_steps()
        finally:
            lock.release()

    def _run_steps(self) -> int:
        names = ", ".join(s.name for s in self.plan.steps)
        log.info("prediction of %s into %s: %s", self.input, self.output, names)
        self.events.record("pipeline_started", steps=[s.name for s in self.plan.steps],
                           models=[m.name for m in self.plan.chosen.models])
        code: int = ExitCode.CRASHED
        try:
            code = self._steps()
        finally:  # pipeline.json never says "running" of a pipeline that is gone (a ConfigError, a lock)
            self._persist(code)
        # preempted between two steps (during one, the engine asks): SLURM runs the job again
        requeued = slurm.requeue_if_preempted(self._stop, code, os.environ)
        if requeued is not None:
            self.events.record(requeued.event, **requeued.fields)
        return code

    def _on_stop(self, name: str) -> None:
        # between two steps (during one, the engine's own handlers stop it resumably)
        self._stop = name

    def _run_parts(self) -> int | None:
        """The parts, at once, each a supervisor of its own; None to go on with the whole's steps, else the code."""
        command = ["predict", str(self.exp.config_path), "-i", str(self.input), "-o", str(self.output),
                   *(["--retry-failed"] if self.retry_failed else [])]
        run = PartsRun(command, self.devices, self.layout.supervisor_dir, PipelineLayout(self.output).lock_file.name,
                       self.events, lambda: self._stop)
        codes = self.parts_run(run)
        code = parts_verdict(codes)
        if code is not None:
            self.events.record("stopped" if code == ExitCode.STOPPED else "incomplete", step="parts", code=code)
            return code
        odd = {str(p): c for p, c in codes.items() if c not in (ExitCode.FINISHED, ExitCode.GAVE_UP)}
        if odd:
            log.warning("part(s) %s ended without finishing (see their logs in %s): the whole prediction predicts "
                        "what they left", ", ".join(f"{p} (exit {c})" for p, c in odd.items()),
                        self.layout.supervisor_dir)
        return None

    def _steps(self) -> int:
        total = 0
        if len(self.devices) > 1:
            self.current = PARTS_STEP
            self._persist(None)
            code = self._run_parts()
            if code is not None:
                return code
        for step in self.plan.steps:
            if self._stop is not None:
                self.events.record("stopped", reason=self._stop, before=step.name)
                log.info("%s: stopped before %s; the same command resumes", self._stop, step.name)
                return ExitCode.STOPPED
            self.current = step.name
            self._persist(None)
            ops = ProcessOps(log_cap=self.exp.spec.process.attempt_log_max_bytes)
            stage = self.stage(step, ops)
            total = len(stage.cases)
            log.info("step %s: %d case(s)%s", step.name, total,
                     f", {len(self.failed)} set aside before" if self.failed else "")
            began = self.wall()
            code = self.engine(stage, ops)
            if step.run_dir != self.layout.supervisor_dir:
                self._copy_events(step, began)
            summary = step_summary(step, stage)
            self.done[step.name] = {**summary, "exit_code": code}
            self.events.record("step_ended", step=step.name, code=code, **summary)
            log.info("step %s: exit %d; %s", step.name, code, summary_line(summary))
            if code == ExitCode.GAVE_UP and set(stage.verified) | set(stage.failed) >= set(stage.cases):
                code = ExitCode.FINISHED  # only cases it set aside are left: the rest goes on without them
            self.failed.update(stage.failed)
            if code != ExitCode.FINISHED:
                self.events.record("incomplete" if code == ExitCode.GAVE_UP else "stopped", step=step.name,
                                   code=code)
                return code
        self.current = None
        if self.failed:
            names = "; ".join(f"{c}: {why}" for c, why in sorted(self.failed.items()))
            self.events.record("incomplete", cases_failed=sorted(self.failed), cases_total=total)
            log.warning("prediction incomplete: %d of %d case(s) failed and were set aside: %s", len(self.failed),
                        total, names)
            return ExitCode.GAVE_UP
        self.events.record("finished", cases_total=total)
        if self.part is not None:
            log.info("part %s finished: each of its %d case(s) predicted by every model, each output verified",
                     self.part, total)
            return ExitCode.FINISHED
        log.info("prediction finished: every one of %d case(s) has a verified, postprocessed output in %s", total,
                 self.output)
        return ExitCode.FINISHED

    def _copy_events(self, step: Step, since: float) -> None:
        """What a person must see in one place: each step's quarantined outputs and set-aside cases."""
        for e in read_events(step.run_dir / "events.jsonl", warn=False):
            if e.get("event") in COPIED and isinstance(e.get("ts"), (int, float)) and e["ts"] >= since:
                fields = {k: v for k, v in e.items() if k not in ("event", "ts")}
                self.events.record(e["event"], step=step.name, **fields)

    def _persist(self, code: int | None) -> None:
        names: dict[int, str] = {ExitCode.FINISHED: "finished", ExitCode.STOPPED: "stopped"}
        state = "running" if code is None else names.get(code, "incomplete")
        self.store.save({
            "schema": 1, "stage": "prediction pipeline", "state": state, "exit_code": code,
            "supervisor_pid": os.getpid(), "started_ts": self._started, "config": str(self.exp.config_path),
            "input": str(self.input), "output": str(self.output), "step": self.current,
            "models": [m.name for m in self.plan.chosen.models], "folds": list(self.plan.chosen.folds),
            "steps": [{"name": s.name, "kind": s.kind, "output": str(s.output), "run_dir": str(s.run_dir),
                       **self.done.get(s.name, {})} for s in self.plan.steps],
            "cases_failed": {c: why for c, why in sorted(self.failed.items())},
            "part": str(self.part) if self.part is not None else None, "parts": len(self.devices),
        })


def step_summary(step: Step, stage: PredictionStage) -> dict[str, Any]:
    """What a step did: cases, the seconds per case it took, its restarts, what it set aside."""
    facts = StateStore(stage.layout.state_file).load()
    gaps = [g for g in facts.get("case_gaps") or [] if isinstance(g, (int, float))]
    return {"cases_total": len(stage.cases), "cases_verified": len(stage.verified),
            "cases_failed": sorted(stage.failed),
            "seconds_per_case": round(statistics.median(gaps), 2) if gaps else None,
            "restarts": facts.get("restarts") if isinstance(facts.get("restarts"), int) else None}


def summary_line(s: dict[str, Any]) -> str:
    per = f", {s['seconds_per_case']:g} s per case" if s.get("seconds_per_case") is not None else ""
    failed = f", failed: {', '.join(s['cases_failed'])}" if s.get("cases_failed") else ""
    restarts = s.get("restarts") or 0
    return f"{s['cases_verified']}/{s['cases_total']} case(s) verified{per}, {restarts} restart(s){failed}"


def part_devices(exp: ExperimentContext) -> list[str | None]:
    """One entry per part of the experiment's prediction (predict.parts; auto: one per GPU, per CPU slot on the
    CPU): the GPU it predicts on, None on the CPU."""
    spec = exp.spec
    gpus: list[str] = []
    if spec.nnunet.device == "cuda":
        from supervisor.experiment.devices import pool

        try:
            gpus = [d.name for d in pool(exp).devices]
        except ConfigError:
            gpus = []  # none found: one part, on what CUDA_VISIBLE_DEVICES says
    n = parts_wanted(spec.predict.parts, spec.nnunet.device, gpus, spec.experiment.devices.slots)
    return [gpus[k % len(gpus)] if gpus else None for k in range(n)]


def predict_experiment(exp: ExperimentContext, input_dir: str | None, output_dir: str | None,
                       part: Part | None = None, retry_failed: bool = False, no_parts: bool = False) -> int:
    """`nnunet-supervise predict EXPERIMENT [-i] [-o] [--part K/N | --no-parts] [--retry-failed]`."""
    p = exp.spec.predict
    inp, out, problems = folders(exp.config_path, p, input_dir, output_dir)
    if problems:
        raise ConfigError(problems, str(exp.config_path))
    if p.folds is not None:
        raise ConfigError(["predict.folds: in an experiment file, the folds are find_best's (leave it out)"],
                          str(exp.config_path))
    devices: list[str | None] | None = [None] if no_parts else None
    return PredictionPipeline(exp, inp, out, part=part, retry_failed=retry_failed, devices=devices).run()


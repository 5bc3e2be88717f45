"""An experiment as a SLURM job chain: one array over the cells that can start at once, the cascade's cells as a
second array that waits (afterok) for the 3d_lowres tasks (in a study, one such array per trainer x plans, each
after its own trainer and plans' lowres tasks only), and a job for find_best_configuration that waits for all of
them. With a predict section, two more: the prediction in parts, an array of one task per part
(`predict EXPERIMENT --part K/N`, afterok on find_best), and the prediction's tail (`predict EXPERIMENT`: every
part's outputs checked, what a part left predicted, then ensembled and postprocessed), afterany on the whole parts
array. Each array task is today's wrapper (requeue on preemption, `exec` of the supervisor); SLURM's own machinery
does the rest, driven by our exit codes (0 done; 1, 2, 3 never requeued; 75 requeued only on the preemption signal).

The chain is data (`chain`), rendered by pure functions (`render`, `submitter`) and submitted by `submit`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

from supervisor.deploy import slurm
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.stages.prediction.parts import parts_wanted


@dataclass(frozen=True)
class Options:
    python: str
    time: str | None = None
    partition: str | None = None
    gres: str | None = None
    cpus: int | None = None
    mem: str | None = None
    lead_s: int = slurm.LEAD_S
    max_parallel: int | None = None


class After(NamedTuple):
    """One wait of a job: for an earlier job of the chain (those tasks of its array, or all of it), of a kind."""

    key: str
    tasks: tuple[int, ...] | None = None
    # afterok: it ended 0 (a requeued task is not yet ok); afterany: it ended, however (a part that set a case aside)
    kind: Literal["afterok", "afterany"] = "afterok"


@dataclass(frozen=True)
class ChainJob:
    """One sbatch script of the chain and what it waits for."""

    # "cells", "cascade" (in a study "cascade:<trainer>__<plans>", one per trainer x plans), "find_best",
    # "predict_parts", "predict"
    key: str
    spec: slurm.JobSpec
    after: tuple[After, ...] = ()

    @property
    def script_name(self) -> str:
        return f"{self.spec.job_name}.sbatch"

    @property
    def what(self) -> str:
        """What the job does, in words (`--submit` prints it beside the job id)."""
        s = self.spec
        if s.cells:
            return f"{len(s.cells)} cell(s): " + ", ".join(
                ("" if len(c) == 2 else f"{c[2]}__{c[3]}/") + f"{c[0]}/fold_{c[1]}" for c in s.cells)
        if self.key == "find_best":
            return "nnUNetv2_find_best_configuration"
        if self.key == "predict_parts":
            return f"the prediction in {s.tasks} part(s), each with every model find_best chose"
        return "the prediction's tail: every part checked, what a part left predicted, ensembled, postprocessed"


def row(cell: Cell) -> tuple[str, ...]:
    """A cell's row of the array's table: configuration and fold, and in a study its trainer and plans."""
    own = (cell.configuration, str(cell.fold))
    return own if cell.trainer is None else (*own, cell.trainer, str(cell.plans))


def waiting_cells(exp: ExperimentContext, todo: list[Cell]) -> list[Cell]:
    """The cells to train that wait for an earlier stage trained in the experiment (the cascade, per trainer x
    plans)."""
    return [c for c in todo if exp.study_of(c).waits_for.get(c.configuration) in exp.study_of(c).configurations]


def prediction_parts(exp: ExperimentContext) -> int | None:
    """How many parts the chain predicts in (one array task each), or None: no predict section, no prediction."""
    if not exp.predicts:  # the experiment file makes sure of predict.input and experiment.find_best with it
        return None
    devices = exp.spec.experiment.devices
    return parts_wanted(exp.spec.predict.parts, exp.spec.nnunet.device, devices.gpus, devices.slots)


def chain(exp: ExperimentContext, finished: Iterable[Cell], opts: Options) -> list[ChainJob]:
    """The jobs, in submission order; cells already finished are left out (submitting again trains what is
    missing). A cascade whose earlier stage is already finished waits for nothing."""
    done = set(finished)
    todo = [c for c in exp.cells if c not in done]
    later = set(waiting_cells(exp, todo))
    first = [c for c in todo if c not in later]
    exp.require_earlier_stages(todo)
    env = {"nnUNet_preprocessed": str(exp.paths.preprocessed), "nnUNet_results": str(exp.paths.results)}
    if exp.paths.raw is not None:
        env["nnUNet_raw"] = str(exp.paths.raw)
    base = slurm.JobSpec(job_name="", python=opts.python, config=exp.config_path, log_dir=exp.layout.root / "slurm",
                         environment=env, time=opts.time, partition=opts.partition, gres=opts.gres, cpus=opts.cpus,
                         mem=opts.mem, lead_s=opts.lead_s, max_parallel=opts.max_parallel)
    stem = f"nnunet-{exp.dataset_name}-{exp.config_path.stem}"
    jobs: list[ChainJob] = []
    if first:
        jobs.append(ChainJob("cells", replace(base, job_name=f"{stem}-cells",
                                              cells=tuple(row(c) for c in first))))
    # the cascade: one array per trainer x plans (one for the single-trainer experiment, whose cells name neither),
    # each afterok on exactly the earlier stage's tasks of its own trainer and plans, so that a lowres fold of one
    # trainer that gave up (DependencyNeverSatisfied) holds that trainer's cascade only
    for study in dict.fromkeys(c.study for c in todo if c in later):
        mine = [c for c in todo if c in later and c.study == study]
        earlier = {exp.study_of(c).waits_for[c.configuration] for c in mine}
        tasks = tuple(i for i, c in enumerate(first) if c.study == study and c.configuration in earlier)
        after = (After("cells", tasks),) if tasks else ()
        key, name = ("cascade", f"{stem}-cascade") if study is None else \
            (f"cascade:{study}", f"{stem}-cascade-{study}")
        jobs.append(ChainJob(key, replace(base, job_name=name, cells=tuple(row(c) for c in mine)), after))
    if exp.spec.experiment.find_best:
        jobs.append(ChainJob("find_best", replace(base, job_name=f"{stem}-find-best", command=("find-best",),
                                                  gres=None, max_parallel=None, time=opts.time or "02:00:00"),
                             tuple(After(j.key) for j in jobs)))
    n = prediction_parts(exp)
    if n is not None:
        # each part a task of the cells' wrapper and gres (one GPU per part: nnUNetv2_predict uses one), as requeued
        jobs.append(ChainJob("predict_parts", replace(
            base, job_name=f"{stem}-predict-parts", command=("predict",), tasks=n,
            args=("--part", f'"${{SLURM_ARRAY_TASK_ID}}/{n}"')), (After("find_best"),)))
        # afterany on the whole array: a part that ended 1 (a poison case set aside) or crashed must not hold the
        # rest back; the tail ensembles and postprocesses every other case and names the failed ones (exit 1). It
        # gets the cells' gres too: it predicts whatever a part left (a part that crashed, was cancelled or timed
        # out), which needs the GPU nnUNetv2_predict was told to use. afterok on find_best as well: where the parts
        # never run (find_best failed) and the cluster cancels them (kill_invalid_depend), the tail must not run.
        # --no-parts: the parts ran as the array's tasks; the tail does not cut the input again on its one GPU
        jobs.append(ChainJob("predict", replace(base, job_name=f"{stem}-predict", command=("predict",),
                                                args=("--no-parts",), max_parallel=None),
                             (After("find_best"), After("predict_parts", kind="afterany"))))
    return jobs


def dependency(job: ChainJob, ids: dict[str, str]) -> str | None:
    """sbatch's --dependency for a job, given the ids of those submitted before it: one list per kind, all of
    them to hold (`afterok:1:2,afterany:3`)."""
    kinds: dict[str, list[str]] = {}
    for wait in job.after:
        if wait.key not in ids:
            continue
        jid = ids[wait.key]
        kinds.setdefault(wait.kind, []).extend(
            [f"{jid}_{t}" for t in wait.tasks] if wait.tasks is not None else [jid])
    return ",".join(f"{kind}:" + ":".join(found) for kind, found in kinds.items()) or None


def shell_variable(key: str, taken: set[str]) -> str:
    """A job's key as a bash variable name, not one of those taken: upper case, anything but letters, digits and
    underscores an underscore (`cascade:nnUNetTrainer__nnUNetPlans` -> `CASCADE_NNUNETTRAINER__NNUNETPLANS`)."""
    var = re.sub(r"[^A-Za-z0-9_]", "_", key).upper()
    if not var or var[0].isdigit():
        var = f"JOB_{var}"
    found, n = var, 1
    while found in taken:
        n += 1
        found = f"{var}_{n}"
    return found


def submitter(jobs: list[ChainJob]) -> str:
    """One bash script that submits the whole chain with its dependencies (what `--submit` does), the sbatch
    scripts inside it as here-documents; prints the job ids, one a line."""
    lines = ["#!/bin/bash", "# Rendered by `nnunet-supervise slurm EXPERIMENT`: submits the experiment as a SLURM job "
             "chain.", "set -euo pipefail"]
    ids: dict[str, str] = {}  # key -> its shell variable
    for job in jobs:
        var = shell_variable(job.key, set(ids.values()))
        dep = dependency(job, {k: f"${{{v}}}" for k, v in ids.items()})
        flag = f" --dependency={dep}" if dep else ""
        lines += [f"{var}=$(sbatch --parsable{flag} <<'NNUNET_SUPERVISE_SBATCH'", slurm.render(job.spec).rstrip("\n"),
                  "NNUNET_SUPERVISE_SBATCH", ")", f'echo "${{{var}}}"']
        ids[job.key] = var
    return "\n".join(lines) + "\n"


def submit(jobs: list[ChainJob], folder: Path,
           sbatch: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None) -> list[str]:
    """Write each script into folder and sbatch them in order with their dependencies; the job ids.

    RuntimeError names the job that could not be submitted (the ones before it are in the queue)."""
    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    sbatch = sbatch or run
    folder.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    out = []
    for job in jobs:
        script = folder / job.script_name
        script.write_text(slurm.render(job.spec))
        dep = dependency(job, ids)
        argv = ["sbatch", "--parsable", *([f"--dependency={dep}"] if dep else []), str(script)]
        try:
            r = sbatch(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"sbatch {script.name} failed: {exc}") from None
        if r.returncode != 0:
            raise RuntimeError(f"sbatch {script.name} failed ({shlex.join(argv)}): {r.stderr.strip()}")
        ids[job.key] = r.stdout.strip().split(";")[0]
        out.append(ids[job.key])
    return out

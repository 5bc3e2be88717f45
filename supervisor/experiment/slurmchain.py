"""An experiment as a SLURM job chain: one array over the cells that can start at once, the cascade's cells as a
second array that waits (afterok) for every 3d_lowres task, and a last job for find_best_configuration that
waits for all of them. Each array task is today's wrapper (requeue on preemption, `exec` of the fold supervisor);
SLURM's own machinery does the rest, driven by our exit codes (0 done; 1, 2, 3 never requeued; 75 requeued only
on the preemption signal).

The chain is data (`chain`), rendered by pure functions (`render`, `submitter`) and submitted by `submit`.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from supervisor.deploy import slurm
from supervisor.experiment.context import Cell, ExperimentContext


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


@dataclass(frozen=True)
class ChainJob:
    """One sbatch script of the chain and what it waits for."""

    key: str  # "cells", "cascade", "find_best"
    spec: slurm.JobSpec
    after: tuple[tuple[str, tuple[int, ...] | None], ...] = ()  # (key of an earlier job, its tasks or all of it)

    @property
    def script_name(self) -> str:
        return f"{self.spec.job_name}.sbatch"


def chain(exp: ExperimentContext, finished: Iterable[Cell], opts: Options) -> list[ChainJob]:
    """The jobs, in submission order; cells already finished are left out (submitting again trains what is
    missing). A cascade whose earlier stage is already finished waits for nothing."""
    done = set(finished)
    todo = [c for c in exp.cells if c not in done]
    later = {c for c in todo if exp.waits_for.get(c.configuration) in exp.configurations}
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
                                              cells=tuple((c.configuration, str(c.fold)) for c in first))))
    if later:
        earlier = {exp.waits_for[c.configuration] for c in later}
        tasks = tuple(i for i, c in enumerate(first) if c.configuration in earlier)
        after = (("cells", tasks),) if tasks else ()
        jobs.append(ChainJob("cascade", replace(base, job_name=f"{stem}-cascade",
                                                cells=tuple((c.configuration, str(c.fold)) for c in sorted(later))),
                             after))
    if exp.spec.experiment.find_best:
        jobs.append(ChainJob("find_best", replace(base, job_name=f"{stem}-find-best", command=("find-best",),
                                                  gres=None, max_parallel=None, time=opts.time or "02:00:00"),
                             tuple((j.key, None) for j in jobs)))
    return jobs


def dependency(job: ChainJob, ids: dict[str, str]) -> str | None:
    """sbatch's --dependency for a job, given the ids of those submitted before it."""
    parts = []
    for key, tasks in job.after:
        if key not in ids:
            continue
        parts += [f"{ids[key]}_{t}" for t in tasks] if tasks is not None else [ids[key]]
    return "afterok:" + ":".join(parts) if parts else None


def submitter(jobs: list[ChainJob]) -> str:
    """One bash script that submits the whole chain with its dependencies (what `--submit` does), the sbatch
    scripts inside it as here-documents; prints the job ids, one a line."""
    lines = ["#!/bin/bash", "# Rendered by `nnunet-supervise slurm EXPERIMENT`: submits the experiment as a SLURM job "
             "chain.", "set -euo pipefail"]
    ids: dict[str, str] = {}
    for job in jobs:
        var = job.key.upper()
        dep = dependency(job, {k: f"${{{k.upper()}}}" for k in ids})
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

"""SLURM: the sbatch script for a run (a pure function), and what the supervisor does inside a job.

The batch shell `exec`s the supervisor, so `#SBATCH --signal=B:<SIG>@<lead>` reaches it before the time limit
(or on `scancel -s <SIG> --batch`). It then stops resumably (a cooperative save if enabled), asks SLURM to
requeue the job (`scontrol requeue`) and exits; the next incarnation resumes from the checkpoint, with the
attempt counter carried in state.json. Any other ending (finished, gave up, a plain SIGTERM from scancel or the
time limit) does not requeue.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.context import RunContext
from supervisor.core.messages import Record
from supervisor.errors import ExitCode

log = logging.getLogger("nnunet_supervise")

PREEMPT_SIGNAL = "USR1"  # what --signal sends, and what counts as "preempted: requeue me"
LEAD_S = 300  # seconds before the time limit: room to finish an epoch and save


@dataclass(frozen=True)
class JobSpec:
    job_name: str
    python: str
    config: Path
    log_dir: Path
    environment: dict[str, str]
    time: str | None = None
    partition: str | None = None
    gres: str | None = None
    folds: str | None = None  # "0-4": a job array, one fold per task
    cpus: int | None = None
    mem: str | None = None  # e.g. 16G: without it a SLURM that counts memory may give one job the whole node
    signal: str = PREEMPT_SIGNAL
    lead_s: int = LEAD_S
    # an experiment's cells, one per array task: (configuration, fold), or in a study (configuration, fold, trainer,
    # plans), written into the script as a table
    cells: tuple[tuple[str, ...], ...] = ()
    max_parallel: int | None = None  # %N: at most N tasks of the array at once
    command: tuple[str, ...] = ("run",)  # the supervisor's command (an experiment's last job: "find-best")
    # an array of this many tasks over `command` itself (no table: the task reads SLURM_ARRAY_TASK_ID, e.g. through
    # `args`), such as an experiment's prediction in parts
    tasks: int | None = None
    # words after the config path, written into the script as they are (shell syntax: "${SLURM_ARRAY_TASK_ID}" is
    # expanded by the batch shell), e.g. ("--part", '"${SLURM_ARRAY_TASK_ID}/4"')
    args: tuple[str, ...] = ()


def render(spec: JobSpec) -> str:
    """The sbatch script: requeue on the preemption signal, its log beside the run, `exec` of the supervisor."""
    array = spec.folds or (f"0-{len(spec.cells) - 1}" if spec.cells else None) or \
        (f"0-{spec.tasks - 1}" if spec.tasks else None)
    if array is not None and spec.max_parallel is not None:
        array += f"%{spec.max_parallel}"
    log_name = "slurm-%x-%A_%a.out" if array else "slurm-%x-%j.out"
    lines = [
        "#!/bin/bash",
        "# Rendered by `nnunet-supervise slurm`; submit with sbatch (or `nnunet-supervise slurm ... --submit`).",
        f"#SBATCH --job-name={spec.job_name}",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:{spec.signal}@{spec.lead_s}",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={spec.log_dir / log_name}",
        "#SBATCH --ntasks=1",
    ]
    for flag, value in (("time", spec.time), ("partition", spec.partition), ("gres", spec.gres),
                        ("cpus-per-task", spec.cpus), ("mem", spec.mem), ("array", array)):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [
        "set -euo pipefail",
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.environment.items())),
        'echo "nnunet-supervise: job ${SLURM_JOB_ID} on $(hostname), restart count ${SLURM_RESTART_COUNT:-0}"',
    ]
    command = f"exec {shlex.quote(spec.python)} -m supervisor {' '.join(spec.command)} {shlex.quote(str(spec.config))}"
    if spec.cells:
        # the array task's cell, from a table a person can read (not an index formula)
        study = any(len(c) == 4 for c in spec.cells)  # several trainers or plans: each row names its own
        lines += ["CELLS=(", *(f"  {shlex.quote(' '.join(c))}  # task {i}" for i, c in enumerate(spec.cells)), ")"]
        if study:
            lines += ['read -r CONFIGURATION FOLD TRAINER PLANS <<< "${CELLS[$SLURM_ARRAY_TASK_ID]}"',
                      'echo "nnunet-supervise: array task ${SLURM_ARRAY_TASK_ID}: ${TRAINER} ${PLANS} ${CONFIGURATION} '
                      'fold ${FOLD}"']
        else:
            lines += ['read -r CONFIGURATION FOLD <<< "${CELLS[$SLURM_ARRAY_TASK_ID]}"',
                      'echo "nnunet-supervise: array task ${SLURM_ARRAY_TASK_ID}: ${CONFIGURATION} fold ${FOLD}"']
        command += ' --configuration "${CONFIGURATION}" --fold "${FOLD}"'
        if study:
            command += ' --trainer "${TRAINER}" --plans "${PLANS}"'
    elif spec.folds:
        command += ' --fold "${SLURM_ARRAY_TASK_ID}"'
    elif spec.tasks:
        lines.append(f'echo "nnunet-supervise: array task ${{SLURM_ARRAY_TASK_ID}} of {spec.tasks}"')
    if spec.args:
        command += " " + " ".join(spec.args)
    # exec: the supervisor *is* the batch shell, so B:<signal> reaches it
    lines += [command, ""]
    return "\n".join(lines)


def spec_for(ctx: RunContext, python: str, *, time: str | None = None, partition: str | None = None,
             gres: str | None = None, folds: str | None = None, cpus: int | None = None,
             lead_s: int = LEAD_S, mem: str | None = None) -> JobSpec:
    nn = ctx.config.nnunet
    env = {"nnUNet_preprocessed": str(ctx.paths.preprocessed), "nnUNet_results": str(ctx.paths.results)}
    if ctx.paths.raw is not None:
        env["nnUNet_raw"] = str(ctx.paths.raw)
    name = f"nnunet-{ctx.dataset_name}-{nn.configuration}" + ("" if folds else f"-f{nn.fold}")
    return JobSpec(job_name=name, python=python, config=ctx.config_path, log_dir=ctx.layout.fold_dir.parent,
                   environment=env, time=time, partition=partition, gres=gres, folds=folds, cpus=cpus,
                   lead_s=lead_s, mem=mem)


# ---- inside a job ----

def job_id(env: Mapping[str, str]) -> str | None:
    """The id `scontrol requeue` takes for this job and nothing else: in an array `<array job id>_<task id>`. (An
    array's last task has SLURM_JOB_ID equal to the array's own id, which scontrol takes as the whole array:
    requeueing it would cancel and requeue every sibling mid-epoch.)"""
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def job_facts(env: Mapping[str, str]) -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NAME",
            "SLURMD_NODENAME")
    return {k.lower(): env[k] for k in keys if env.get(k)}


def should_requeue(stop_reason: str | None, exit_code: int, env: Mapping[str, str],
                   signal_name: str = PREEMPT_SIGNAL) -> bool:
    """Only a resumable stop caused by the preemption signal requeues; a give-up or a finish never does."""
    return job_id(env) is not None and exit_code == ExitCode.STOPPED and stop_reason == f"SIG{signal_name}"


def job_record(env: Mapping[str, str]) -> tuple[str | None, Record | None]:
    """Inside a SLURM job: its id and the `slurm` record (job, array task, restart count, node); else (None, None)."""
    facts = job_facts(env)
    if not facts:
        return None, None
    log.info("inside SLURM job %s (restart count %s)", facts["slurm_job_id"], facts.get("slurm_restart_count", "0"))
    return facts["slurm_job_id"], Record("slurm", dict(facts))


def requeue_if_preempted(stop_reason: str | None, exit_code: int, env: Mapping[str, str]) -> Record | None:
    """Preempted inside a SLURM job: ask SLURM to run the job again (it resumes from the checkpoint); the `requeue`
    record says how that went. Any other ending: nothing."""
    if not should_requeue(stop_reason, exit_code, env):
        return None
    ok, said = requeue(env)
    job = job_id(env)
    if ok:
        log.info("requeued SLURM job %s: the next incarnation resumes from the checkpoint", job)
    else:
        log.error("scontrol requeue %s failed: %s", job, said)
    return Record("requeue", {"job": job, "ok": ok, "output": said})


def requeue(env: Mapping[str, str], timeout_s: float = 60) -> tuple[bool, str]:
    jid = job_id(env)
    try:
        r = subprocess.run(["scontrol", "requeue", str(jid)], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return r.returncode == 0, (r.stdout + r.stderr).strip()

"""The CLI's commands for an experiment file (`run`, `check`, `status`, `stop`, `report`); the CLI dispatches here
when the file has an `experiment` section and turns SupervisorError into messages and exit codes."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from supervisor.core.rules import STOP_MARGIN_S
from supervisor.deploy.systemd import UnitSpec, spec_for
from supervisor.errors import ConfigError, SupervisorError
from supervisor.experiment.context import Cell, ExperimentContext
from supervisor.experiment.devices import pool
from supervisor.experiment.slurmchain import Options
from supervisor.oomscore import protect_self
from supervisor.preflight import (
    Report,
    cheap_checks,
    check_preprocessed,
    full_check,
    oom_protection_note,
    port_in_use,
)


def checks(exp: ExperimentContext, deep: bool, data_deep: bool = False) -> Report:
    """What `check` says (deep: also the trainer lookup subprocess); `run` uses the cheap part."""
    report = Report()
    report.notes.append(f"experiment: {len(exp.configurations)} configuration(s) x "
                        f"{len(exp.spec.experiment.folds)} fold(s) = {len(exp.cells)} cell(s): "
                        f"{', '.join(exp.configurations)}")
    for later, earlier in exp.waits_for.items():
        if later in exp.configurations:
            report.notes.append(f"{later} starts once every fold of {earlier} finished (its validation writes "
                                f"{later}'s inputs)")
    try:
        line = pool(exp).line
        report.notes.append(f"devices: {line}")
    except ConfigError as exc:
        report.problems += exc.problems
    firsts: dict[tuple[str | None, str], Cell] = {}  # one cell per configuration (per trainer x plans in a study)
    for c in exp.cells:
        firsts.setdefault((c.study, c.configuration), c)
    looked: set[str | None] = set()
    for i, ((study, conf), first) in enumerate(firsts.items()):  # in the cells' order
        configuration = conf if study is None else f"{study}/{conf}"
        ctx = exp.run(first)
        sub = Report()
        if deep and (i == 0 or first.trainer not in looked):  # the trainer lookup (a subprocess) once per trainer
            looked.add(first.trainer)
            sub = full_check(ctx, data_deep)  # the trainer lookup (a subprocess) once: every cell uses the same one
        else:
            cheap_checks(ctx, sub)
            if deep:
                check_preprocessed(ctx, sub, data_deep)
        report.problems += [f"{configuration}: {p}" for p in sub.problems]
        report.notes += [f"{configuration}: {n}" for n in sub.notes]
        report.warnings += [f"{configuration}: {w}" for w in sub.warnings]
    if not deep:  # full_check said it for the first configuration
        report.notes.append(oom_protection_note())
    splits = exp.preprocessed / "splits_final.json"
    report.notes.append(f"{splits} {'exists' if splits.exists() else 'will be written once, before folds start'}")
    m = exp.spec.metrics
    if m.port is not None:
        busy = port_in_use(m.host, m.port)
        if busy:
            report.problems.append(f"metrics.port: {m.host}:{m.port} cannot be served ({busy})")
    return report


def run(path: Path, level: int, doc: Any = None) -> int:
    from supervisor.experiment.supervise import ExperimentSupervisor

    exp = ExperimentContext.load(path, doc)
    report = checks(exp, deep=False)
    if not report.ok:
        raise ConfigError(report.problems, str(exp.config_path))
    logging.getLogger("nnunet_supervise").setLevel(level)
    logging.getLogger("nnunet_supervise").info("%s", protect_self())
    return ExperimentSupervisor(exp).run()


def status(path: Path, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    from supervisor.experiment.view import status as gather
    from supervisor.experiment.view import table

    info = {**gather(ExperimentContext.load(path)), **(extra or {})}
    click.echo(json.dumps(info, indent=2, default=str) if as_json else table(info))


def stop(path: Path, wait_s: float | None) -> None:
    from supervisor.experiment.supervise import stop_everything
    from supervisor.observe.control import NotRunning, request_stop

    exp = ExperimentContext.load(path)
    try:
        pid = request_stop(exp.layout, reason="nnunet-supervise stop", wait_s=wait_s)
        click.echo(f"asked experiment supervisor pid {pid} to stop every fold resumably"
                   + (" ; it has exited" if wait_s is not None else ""))
        return
    except NotRunning:
        pass
    stopped = stop_everything(exp)  # a killed experiment supervisor's folds train on: stop them one by one
    if not stopped:
        raise NotRunning(f"experiment {exp.layout.root}: neither its supervisor nor any fold supervisor is running; "
                         "nothing to stop")
    click.echo(f"no experiment supervisor is running; asked {len(stopped)} fold supervisor(s) to stop resumably: "
               + ", ".join(stopped))


def report(path: Path, output: Path | None, as_json: bool) -> None:
    from supervisor.experiment.view import gantt
    from supervisor.experiment.view import report as numbers_of
    from supervisor.experiment.view import report_lines as cv_lines
    from supervisor.observe.predictreport import prediction_report, report_lines

    exp = ExperimentContext.load(path)
    numbers = gantt(exp, output) if output is not None else numbers_of(exp)
    numbers.pop("bars", None)
    if output is not None:
        numbers["picture"] = str(output)
    pred = prediction_report(exp.predict_layout().output) if exp.predicts else None
    if pred is not None:
        numbers["predict"] = pred
    if as_json:
        click.echo(json.dumps(numbers, indent=2, default=str))
        return
    click.echo(f"makespan {numbers['makespan_s'] / 60:.1f} min on {', '.join(numbers['devices']) or 'no device'}, "
               f"goodput {numbers['goodput']:.1%}, {numbers['fold_starts']} fold start(s), "
               f"{numbers['failures']} failure(s)")
    for cell, n in numbers["folds"].items():
        click.echo(f"  {cell}: {n['epochs_kept']} epochs kept, {n['epochs_redone']} redone, {n['restarts']} restarts")
    for line in cv_lines(numbers):
        click.echo(line)
    if output is not None:
        click.echo(f"gantt: {output}")
    for line in report_lines(pred) if pred is not None else []:
        click.echo(line)



def unit_spec(exp: ExperimentContext, python: str, user: str | None, user_unit: bool) -> UnitSpec:
    """One systemd unit for the whole experiment: it runs the experiment supervisor, whose stop stops every fold
    (in parallel: the unit waits as long as one fold's stop takes, plus the experiment supervisor's own exit)."""
    one = spec_for(exp.run(exp.cells[0]), python, user, user_unit)
    nn = exp.spec.nnunet
    return replace(one, name=exp.config_path.stem, stop_timeout_s=one.stop_timeout_s + int(STOP_MARGIN_S),
                   description=f"nnU-Net {nn.dataset} experiment ({', '.join(exp.configurations)} x "
                               f"{len(exp.spec.experiment.folds)} folds, {nn.trainer}), nnunet-supervise "
                               f"{exp.config_path}")


def slurm_chain(path: Path, opts: Options, submit: bool, parsable: bool) -> None:
    """`slurm EXPERIMENT`: print the chain's submit script, or submit it and print the job ids."""
    from supervisor.experiment import slurmchain

    exp = ExperimentContext.load(path)
    finished = [c for c in exp.cells if exp.fold_layout(c).is_finished()]
    jobs = slurmchain.chain(exp, finished, opts)
    if not jobs:
        click.echo("every cell is finished and find_best is off: nothing to submit", err=True)
        return
    if not submit:
        click.echo(slurmchain.submitter(jobs), nl=False)
        return
    try:
        ids = slurmchain.submit(jobs, exp.layout.root / "slurm")
    except RuntimeError as exc:
        raise SupervisorError(str(exc)) from None
    for job, job_id in zip(jobs, ids, strict=True):
        if parsable:
            click.echo(job_id)
            continue
        what = job.what
        after = slurmchain.dependency(job, dict(zip((j.key for j in jobs), ids, strict=True)))
        click.echo(f"{job_id}  {job.key}: {what}" + (f" (after {after})" if after else ""))
    if not parsable:
        click.echo(f"scripts and logs in {exp.layout.root / 'slurm'}; skipped {len(finished)} finished cell(s)")


def find_best(path: Path) -> int:
    """`find-best EXPERIMENT`: the final step alone (the chain's last job), once every cell finished."""
    import subprocess

    from supervisor.command import helper_env
    from supervisor.experiment import findbest

    exp = ExperimentContext.load(path)
    missing = [c.name for c in exp.cells if not exp.fold_layout(c).is_finished()]
    if missing:
        raise SupervisorError(f"not every fold finished ({', '.join(missing)}); find_best_configuration needs them all")
    argv = findbest.find_best_argv(exp, exp.configurations)
    if argv is None:
        click.echo("no numbered folds: no find_best_configuration to run")
        return 0
    exp.layout.root.mkdir(parents=True, exist_ok=True)
    code = subprocess.run(argv, env=helper_env(exp.run(exp.cells[0])), stdin=subprocess.DEVNULL).returncode
    kept = findbest.keep_outputs(exp) if code == 0 else []
    if code != 0 or not kept:
        raise SupervisorError(f"nnUNetv2_find_best_configuration failed (exit {code})")
    click.echo(f"kept {', '.join(str(p) for p in kept)}")
    return 0


def wait(path: Path, configurations: tuple[str, ...], poll_s: float, trainers: tuple[str, ...] = (),
         plans: tuple[str, ...] = ()) -> int:
    """`wait EXPERIMENT [--configuration C]... [--trainer T]... [--plans P]...`: block until those cells (each filter
    left out: all) finished; 0 then, 1 as soon as one of them failed with no supervisor left to retry it. A
    Kubernetes init container's way to order Jobs (a study's cascade waits for its own trainer's lowres folds)."""
    import time

    from supervisor.rundir.lock import RunLock
    from supervisor.rundir.statefile import StateStore

    exp = ExperimentContext.load(path)
    problems = []
    for option, given, known in (("--configuration", configurations, exp.configurations),
                                 ("--trainer", trainers, exp.spec.trainers), ("--plans", plans, exp.spec.plans_names)):
        unknown = [v for v in given if v not in known]
        if unknown:
            problems.append(f"{option}: {', '.join(unknown)} not in this experiment ({', '.join(known)})")
    if problems:
        raise ConfigError(problems, str(exp.config_path))

    def wanted(cell: Cell) -> bool:
        trainer, plan = exp.trainer_plans(cell)
        return (not configurations or cell.configuration in configurations) \
            and (not trainers or trainer in trainers) and (not plans or plan in plans)

    cells = [c for c in exp.cells if wanted(c)]
    said = -1
    while True:
        left = [c for c in cells if not exp.fold_layout(c).is_finished()]
        if not left:
            click.echo(f"every one of {len(cells)} fold(s) finished")
            return 0
        for cell in left:
            layout = exp.fold_layout(cell)
            state = StateStore(layout.state_file).read().data
            if state.get("state") == "failed" and not RunLock(layout.lock_file).is_held_elsewhere():
                click.echo(f"{cell.name} gave up: what waits for it cannot start", err=True)
                return 1
        if len(left) != said:
            said = len(left)
            click.echo(f"waiting for {len(left)} of {len(cells)} fold(s): {', '.join(c.name for c in left[:8])}"
                       + (" ..." if len(left) > 8 else ""))
        time.sleep(poll_s)


def kubernetes(path: Path, output: Path | None) -> None:
    from supervisor.experiment import kubernetes as k8s

    exp = ExperimentContext.load(path)
    docs = k8s.manifests(exp, {c for c in exp.cells if exp.fold_layout(c).is_finished()})
    if output is None:
        click.echo(k8s.render(docs), nl=False)
        return
    for written in k8s.write(docs, output):
        click.echo(str(written))

"""Command line: `nnunet-supervise run|check|status CONFIG`; a bare `nnunet-supervise run.yaml` means run.

Only this module turns SupervisorError into a message and an exit code.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from supervisor import __version__
from supervisor.context import RunContext
from supervisor.errors import ConfigError, ExitCode, SupervisorError
from supervisor.rundir.lock import RunLock

F = TypeVar("F", bound=Callable[..., Any])
CONFIG_ARG = click.argument("config", type=click.Path(path_type=Path, dir_okay=False))


class _DefaultRunGroup(click.Group):
    """`nnunet-supervise run.yaml` is `nnunet-supervise run run.yaml`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and args[0].endswith((".yaml", ".yml")):
            args.insert(0, "run")
        return super().resolve_command(ctx, args)


def _fail(exc: SupervisorError) -> None:
    if isinstance(exc, ConfigError):
        click.echo(f"nnunet-supervise: invalid config {exc.source}:", err=True)
        for p in exc.problems:
            click.echo(f"  - {p}", err=True)
    else:
        click.echo(f"nnunet-supervise: {exc}", err=True)
    sys.exit(exc.exit_code)


def _splits_ahead(config: Path) -> None:
    """A cell started alone writes the experiment's splits_final.json first, as the experiment supervisor would:
    its sibling cells start at the same moment and nnU-Net's own write of the file races."""
    from supervisor.experiment.context import ExperimentContext
    from supervisor.experiment.supervise import write_splits_ahead

    try:
        write_splits_ahead(ExperimentContext.load(config))
    except (SupervisorError, OSError, subprocess.SubprocessError) as exc:
        logging.getLogger("nnunet_supervise").warning("could not write splits_final.json ahead (%s); nnU-Net "
                                                       "writes it itself", exc)


# Each command reads and parses its file once: the document _experiment read is what the loaders get.
_DOCUMENTS: dict[Path, Any] = {}


def _document(config: Path) -> Any:
    from supervisor.config import read_document

    path = config.resolve()
    if path not in _DOCUMENTS:
        _DOCUMENTS[path] = read_document(path)
    return _DOCUMENTS[path]


def _load(config: Path, fold: str | None = None, configuration: str | None = None, trainer: str | None = None,
          plans: str | None = None) -> RunContext:
    try:
        return RunContext.load(config, fold, configuration, _document(config), trainer, plans)
    except SupervisorError as exc:
        _fail(exc)
        raise  # unreachable; keeps type checkers content


def _experiment(config: Path, command: str, **flags: object) -> bool:
    """Is CONFIG an experiment file (to be handled whole by supervisor.experiment.commands)? Flags that only make
    sense for one run are refused for it, naming the command."""
    from supervisor.expfile import is_experiment

    try:
        whole = is_experiment(_document(config))
    except SupervisorError as exc:
        _fail(exc)
    given = [name for name, value in flags.items() if value]
    if whole and given:
        _fail(ConfigError([f"{command} of an experiment file covers all of it; {', '.join(given)} is for one run"],
                          str(config)))
    return whole


def _experiment_command(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an experiment command; its SupervisorError becomes the message and exit code."""
    try:
        return fn(*args)
    except SupervisorError as exc:
        _fail(exc)


@click.group(cls=_DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nnunet-supervise")
def main() -> None:
    """Keep an nnU-Net v2 training alive: relaunch with --c after crashes, back off, never lose a checkpoint."""


@main.command()
@CONFIG_ARG
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--fold", default=None, help="Override nnunet.fold (a SLURM job array passes its task id).")
@click.option("--configuration", default=None, help="With --fold: one cell of an experiment file.")
@click.option("--trainer", default=None, help="With --configuration and --fold: the cell's trainer (an experiment of "
              "several experiment.trainers).")
@click.option("--plans", default=None, help="With --configuration and --fold: the cell's plans (an experiment of "
              "several experiment.plans).")
def run(config: Path, verbose: bool, fold: str | None, configuration: str | None, trainer: str | None = None,
        plans: str | None = None) -> None:
    """Supervise one training until it finishes (0), gives up (1) or is stopped resumably (75); an experiment file:
    every configuration and fold, then find_best_configuration (0 all done, 1 incomplete, 75 stopped).

    Exit codes: 0 finished, 1 gave up, 2 bad config, 3 locked by another live supervisor, 75 stopped on request,
    70 the supervisor itself crashed (a bug: the trainer's tree is stopped; a restart resumes).
    """
    from supervisor.daemon.runner import Runner
    from supervisor.preflight import Report, cheap_checks

    level = _logging(verbose)
    if fold is None and configuration is None and trainer is None and plans is None and _experiment(config, "run"):
        from supervisor.experiment import commands
        from supervisor.expfile import parse_experiment

        spec = _experiment_command(parse_experiment, _document(config), str(config.resolve()))
        if spec.experiment.preprocess:  # experiment.preprocess: the dataset first (done and verified: at once)
            code = _run_preprocessing(config)
            if code != ExitCode.FINISHED:
                logging.getLogger("nnunet_supervise").error("the preprocessing ended with exit %d; no fold started",
                                                            code)
                sys.exit(code)
        try:
            sys.exit(_experiment_command(commands.run, config, level, _document(config)))
        except SystemExit:
            raise
        except Exception:  # a bug of ours: 70, which a systemd unit restarts (the folds train on meanwhile)
            logging.getLogger("supervisor").exception("the supervisor crashed; exiting %d", ExitCode.CRASHED)
            sys.exit(ExitCode.CRASHED)
    ctx = _load(config, fold, configuration, trainer, plans)
    report = Report()
    cheap_checks(ctx, report)
    if not report.ok:
        _fail(ConfigError(report.problems, str(ctx.config_path)))
    if configuration is not None:  # one cell of an experiment, started alone (SLURM array task, Kubernetes pod)
        _splits_ahead(config)
    try:
        if sys.stderr.isatty():  # a person watching: a live status line under the log
            from supervisor.observe.terminal import TerminalStatus

            with TerminalStatus() as term:
                term.install_logging(level)
                code = Runner(ctx, on_status=term.update).run()
        else:  # systemd, SLURM, a pipe: plain timestamped lines
            code = Runner(ctx).run()
    except SupervisorError as exc:
        _fail(exc)
    except Exception:  # a bug of ours must not read as "gave up" (1), which systemd is told not to restart
        logging.getLogger("supervisor").exception("the supervisor crashed; exiting %d", ExitCode.CRASHED)
        sys.exit(ExitCode.CRASHED)
    sys.exit(code)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": ["--help"]})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def train(click_ctx: click.Context, args: tuple[str, ...]) -> None:
    """`nnunet-supervise train DATASET CONFIGURATION FOLD [nnUNetv2_train's options]`: the nnUNetv2_train command you
    type, supervised with our defaults. It writes the run.yaml it runs into the fold's folder
    (fold_<fold>/supervisor/run.yaml; `status`, `stop`, `report`, `systemd`, `slurm` take it) and runs it.
    nnU-Net's -tr -p -device -num_gpus --npz --val --val_best --disable_checkpointing -pretrained_weights (first
    launch only) are mapped, --c is accepted (the supervisor resumes by itself); ours: --cooperative,
    --max-restarts N, --write-only, -v.

    Exit codes: as `run`.
    """
    import time as time_

    import yaml

    from supervisor.atomic import atomic_write_text
    from supervisor.config import parse_config
    from supervisor.layout import resolve_dataset_name
    from supervisor.trainargs import TrainArgsError, header, parse

    try:
        req = parse(list(args), Path.cwd())
    except TrainArgsError as exc:
        click.echo(f"nnunet-supervise train: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    paths = {k: str(Path(os.environ[k]).resolve()) for k in names if os.environ.get(k)}
    missing = [k for k in names[1:] if k not in paths]
    if missing:
        _fail(ConfigError([f"${k} is not set: nnUNetv2_train needs it too" for k in missing], "the environment"))
    nn = req.doc["nnunet"]
    try:
        roots = [Path(paths[k]) for k in names if k in paths]
        name = resolve_dataset_name(nn["dataset"], roots)
    except ConfigError as exc:
        _fail(exc)
    fold_dir = Path(paths["nnUNet_results"]) / name / f"{nn['trainer']}__{nn['plans']}__{nn['configuration']}" \
        / f"fold_{nn['fold']}"
    target = fold_dir / "supervisor" / "run.yaml"
    doc = {**req.doc, "paths": paths}
    try:
        parse_config(doc, f"nnunet-supervise train {' '.join(args)}")
    except ConfigError as exc:
        _fail(exc)
    if req.validate_only and not (fold_dir / "checkpoint_final.pth").is_file():
        _fail(ConfigError([f"--val: {fold_dir / 'checkpoint_final.pth'} is missing: a validation-only run needs "
                           "the finished training (train without --val first)"], "nnunet-supervise train"))
    text = header(req.argv, time_.strftime("%Y-%m-%d %H:%M:%S")) + yaml.safe_dump(doc, sort_keys=False)
    if target.is_file():
        try:
            before = yaml.safe_load(target.read_text())
        except (OSError, yaml.YAMLError):
            before = None
        if before != doc:
            click.echo(f"nnunet-supervise train: {target} existed with other settings; rewritten from this command "
                       "(a resume whose trainer settings changed is stopped before it launches)", err=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except OSError as exc:
        _fail(ConfigError([f"cannot write {target}: {exc}"], "nnunet-supervise train"))
    for note in req.notes:
        click.echo(f"nnunet-supervise train: {note}", err=True)
    click.echo(f"nnunet-supervise train: run.yaml {target} (`nnunet-supervise run {target}` runs it again)",
               err=True)
    if req.validate_only and (fold_dir / "validation" / "summary.json").is_file():
        click.echo("nnunet-supervise train: --val: the final validation is done already (validation/summary.json); "
                   "move the validation folder away to make it again", err=True)
    if req.write_only:
        sys.exit(ExitCode.FINISHED)
    click_ctx.invoke(run, config=target, verbose=req.verbose, fold=None, configuration=None, trainer=None, plans=None)


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["--help"]}


@main.group(name="init")
def init_group() -> None:
    """Write a commented run.yaml or experiment file; nothing runs (then `check` it and `run` it)."""


@init_group.command(name="run", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def init_run_command(args: tuple[str, ...]) -> None:
    """`init run DATASET CONFIGURATION FOLD [nnUNetv2_train's options] [-o FILE] [--force]`: the run.yaml `train`
    writes for those arguments (default ./run.yaml), every other key commented out at its default.

    Exit codes: 0 written, 2 a usage or config problem (an existing file without --force).
    """
    from supervisor.scaffold import init_run

    sys.exit(init_run(list(args), Path.cwd(), os.environ, lambda line: click.echo(line, err=True)))


@init_group.command(name="experiment", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def init_experiment_command(args: tuple[str, ...]) -> None:
    """`init experiment DATASET [-c CONFIGURATION ...] [-f FOLD ...] [-tr TRAINER ...] [-p PLANS ...]
    [-device cuda|cpu|mps] [-o FILE] [--force]`: an experiment file (default ./experiment.yaml) from the dataset's
    plans (configurations) and splits_final.json (folds); not preprocessed yet: experiment.preprocess: true.

    Exit codes: 0 written, 2 a usage or config problem (an existing file without --force).
    """
    from supervisor.scaffold import init_experiment

    sys.exit(init_experiment(list(args), Path.cwd(), os.environ, lambda line: click.echo(line, err=True)))


def _logging(verbose: bool) -> int:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s nnunet-supervise[%(process)d]: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    return level


def _preprocessing(config: Path) -> Any:
    """The preprocessing this file names (a PreprocessContext), or the ConfigError's message and exit 2."""
    from supervisor.stages.preprocessing.context import PreprocessContext

    try:
        return PreprocessContext.load(config, _document(config))
    except SupervisorError as exc:
        _fail(exc)


def _run_preprocessing(config: Path, deep: bool = False) -> int:
    """The preprocessing stage on the engine, in this process: its exit code (SupervisorError -> message, exit)."""
    from supervisor.daemon.process import ProcessOps
    from supervisor.daemon.runner import Engine
    from supervisor.stages.preprocessing.stage import PreprocessingStage

    pctx = _preprocessing(config)
    try:
        ops = ProcessOps(log_cap=pctx.config.process.attempt_log_max_bytes)
        return Engine(PreprocessingStage(pctx, ops, deep=deep), ops).run()
    except SupervisorError as exc:
        _fail(exc)
    except Exception:  # a bug of ours must not read as "gave up" (1)
        logging.getLogger("supervisor").exception("the supervisor crashed; exiting %d", ExitCode.CRASHED)
        sys.exit(ExitCode.CRASHED)
    return ExitCode.CRASHED  # unreachable


@main.command()
@CONFIG_ARG
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--deep", is_flag=True, help="Also decompress every preprocessed case (slower) to verify it.")
def preprocess(config: Path, verbose: bool, deep: bool) -> None:
    """Plan and preprocess the dataset for the configurations the file names (a run.yaml: its configuration; an
    experiment: its configurations), supervised: progress in cases written, stalls, OOM -> fewer processes, and a
    relaunch that keeps every case already written. Ends by verifying every training case of every configuration.

    Exit codes: 0 complete and verified, 1 gave up, 2 bad config, 3 locked by another live supervisor, 75 stopped.
    """
    _logging(verbose)
    sys.exit(_run_preprocessing(config, deep))


def _part(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from supervisor.stages.prediction.parts import Part

    if value is None:
        return None
    try:
        return Part.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@CONFIG_ARG
@click.option("-i", "input_dir", default=None, help="The input folder (instead of predict.input).")
@click.option("-o", "output_dir", default=None, help="The output folder (instead of predict.output).")
@click.option("--part", "part", default=None, callback=_part, metavar="K/N",
              help="Predict only part K (from 0) of N of the input cases, in a run directory of its own (a SLURM "
                   "array task, a pod of an Indexed Job); `predict` without --part then checks the parts complete.")
@click.option("--no-parts", is_flag=True, help="Do not cut the input into parts here (they ran elsewhere, e.g. as "
                                                "SLURM array tasks): verify every output, predict what is left, "
                                                "combine.")
@click.option("--retry-failed", is_flag=True, help="Try again the cases set aside before (poison), their input "
                                                   "unchanged.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def predict(config: Path, input_dir: str | None, output_dir: str | None, part: Any, no_parts: bool,
            retry_failed: bool, verbose: bool) -> None:
    """Predict the input folder with the run's model (nnUNetv2_predict), supervised: every output verified against
    its input before each relaunch and at the end (a torn one is quarantined and predicted again), progress in cases
    written, stalls, OOM -> fewer processes; predict.parts: N cuts the input into N parts predicted at once (one per
    GPU). An experiment file: what find_best chose, predicted, ensembled and postprocessed as its
    inference_instructions.txt says, each step supervised so.

    Exit codes: 0 every input case has a verified output, 1 incomplete, 2 bad config or input, 3 locked, 75 stopped.
    """
    from supervisor.expfile import is_experiment

    _logging(verbose)
    try:
        doc = _document(config)
        if is_experiment(doc):  # what find_best chose: predicted, ensembled, postprocessed (supervisor.pipeline)
            from supervisor.experiment.context import ExperimentContext
            from supervisor.pipeline.predict import predict_experiment

            code = predict_experiment(ExperimentContext.load(config, doc), input_dir, output_dir, part, retry_failed,
                                      no_parts)
            sys.exit(code)
        from supervisor.pipeline.single import predict_run

        code = predict_run(config, doc, input_dir, output_dir, part, retry_failed, no_parts)
    except SupervisorError as exc:
        _fail(exc)
    except Exception:  # a bug of ours must not read as "gave up" (1)
        logging.getLogger("supervisor").exception("the supervisor crashed; exiting %d", ExitCode.CRASHED)
        sys.exit(ExitCode.CRASHED)
    sys.exit(code)


@main.command()
@CONFIG_ARG
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the timeline picture (PNG) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def report(config: Path, output: Path | None, as_json: bool) -> None:
    """Goodput, epochs redone, restarts and failures of a run; -o draws the timeline (epoch over wall time). An
    experiment: makespan and goodput; -o draws its folds as bars over wall time per device."""
    from supervisor.observe.predictreport import for_config, report_lines
    from supervisor.observe.report import plot, summary, timeline

    if _experiment(config, "report"):
        from supervisor.experiment import commands

        _experiment_command(commands.report, config, output, as_json)
        return
    ctx = _load(config)
    t = timeline(ctx.layout)
    numbers = summary(t)
    pred = for_config(config, ctx.config.predict.output)  # a prediction of this file's predict section, if one ran
    if output is not None:
        plot(t, output)
        numbers["picture"] = str(output)
    if pred is not None:
        numbers["predict"] = pred
    if as_json:
        click.echo(json.dumps(numbers, indent=2))
        return
    click.echo(f"wall {numbers['wall_s'] / 60:.1f} min, goodput {numbers['goodput']:.1%} "
               f"({numbers['kept_training_s'] / 60:.1f} min of kept epochs), {numbers['epochs_kept']} epochs kept, "
               f"{numbers['epochs_redone']} redone, {numbers['restarts']} restarts")
    for f in numbers["failures"]:
        click.echo(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f['ts']))} attempt {f['attempt']}: "
                   f"{f['classification']}" + (f" (cause {f['cause']})" if f.get("cause") else ""))
    for r in numbers["remedies"]:
        click.echo(f"  remedy from attempt {r['attempt']}: {r['variable']} {r['from']} -> {r['to']} "
                   f"(after {r['cause']})")
    for up in numbers["startup"]:
        parts = ", ".join(f"{name} {secs:.1f} s" for name, secs in up["parts"].items())
        click.echo(f"  start-up of attempt {up['attempt']}: {parts} (total {up['total_s']:.1f} s)")
    if output is not None:
        click.echo(f"timeline: {output}")
    for line in report_lines(pred) if pred is not None else []:
        click.echo(line)


@main.command()
@click.option("--experiment", is_flag=True, help="The schema of an experiment file instead.")
def schema(experiment: bool) -> None:
    """Print the JSON schema of run.yaml, or of an experiment file (for editors: yaml-language-server, VS Code)."""
    from supervisor.config import Config
    from supervisor.expfile import ExperimentFile

    doc = (ExperimentFile if experiment else Config).model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "nnunet-supervise experiment file" if experiment else "nnunet-supervise run.yaml"
    click.echo(json.dumps(doc, indent=2))


@main.command()
@CONFIG_ARG
@click.option("--submit", is_flag=True, help="Write the script beside the run and sbatch it.")
@click.option("--time", "time_limit", default=None, help="#SBATCH --time, e.g. 2-00:00:00.")
@click.option("--partition", default=None, help="#SBATCH --partition.")
@click.option("--gres", default=None, help="#SBATCH --gres, e.g. gpu:1.")
@click.option("--cpus", type=int, default=None, help="#SBATCH --cpus-per-task.")
@click.option("--mem", default=None, help="#SBATCH --mem, e.g. 32G (memory per node for the job).")
@click.option("--folds", default=None, help="A job array over folds, e.g. 0-4: one fold per task.")
@click.option("--lead", "lead_s", type=click.IntRange(min=30), default=None,
              help="Seconds before the time limit that SIGUSR1 arrives: room for the cooperative save and the "
                   "tree's stop. Default: from the config (a save at the next step: process.stop_grace_s + 120 + "
                   "60; at the epoch end: + 900; without cooperative mode 300).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None,
              help="An experiment: at most this many array tasks at once (%N).")
@click.option("--parsable", is_flag=True, help="With --submit: print only the job ids, one a line.")
def slurm(config: Path, submit: bool, time_limit: str | None, partition: str | None, gres: str | None,
          cpus: int | None, mem: str | None, folds: str | None, lead_s: int | None, max_parallel: int | None,
          parsable: bool) -> None:
    """Print (or --submit) an sbatch script: requeue on the preemption signal, resume from the checkpoint. An
    experiment: a job chain (an array of the cells, a cascade array per trainer x plans after its own lowres tasks,
    find_best last)."""
    import subprocess

    from supervisor.core.rules import stop_deadline_s
    from supervisor.deploy import slurm as sl

    def lead(sections: Any) -> int:
        c = sections.cooperative
        if lead_s is not None:
            return lead_s
        deadline = stop_deadline_s(sections.process.stop_grace_s, c.enabled, c.save_on_stop, c.stop_timeout_s)
        # without cooperative mode nothing is saved on a stop, but the tree's SIGTERM grace still has to fit
        return deadline if c.enabled else max(sl.LEAD_S, deadline)

    if _experiment(config, "slurm", **{"--folds": folds}):
        from supervisor.experiment import commands, slurmchain
        from supervisor.expfile import parse_experiment

        spec_doc = _experiment_command(parse_experiment, _document(config), str(config.resolve()))
        lead_s = lead(spec_doc)

        opts = slurmchain.Options(sys.executable, time=time_limit, partition=partition, gres=gres, cpus=cpus, mem=mem,
                                lead_s=lead_s, max_parallel=max_parallel)
        _experiment_command(commands.slurm_chain, config, opts, submit, parsable)
        return
    ctx = _load(config)
    lead_s = lead(ctx.config)
    if folds is not None and not all(part.strip().isdigit() for chunk in folds.split(",")
                                     for part in chunk.split("-", 1)):
        click.echo(f"nnunet-supervise: --folds: got {folds!r}; allowed: fold numbers like 0-4 or 0,2,3", err=True)
        sys.exit(ExitCode.USAGE)
    spec = sl.spec_for(ctx, sys.executable, time=time_limit, partition=partition, gres=gres, folds=folds, cpus=cpus,
                       lead_s=lead_s, mem=mem)
    text = sl.render(spec)
    if not submit:
        click.echo(text, nl=False)
        return
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    script = spec.log_dir / f"{spec.job_name}.sbatch"
    script.write_text(text)
    try:
        r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        click.echo(f"nnunet-supervise: sbatch failed: {exc}", err=True)
        sys.exit(ExitCode.GAVE_UP)
    if r.returncode != 0:
        click.echo(f"nnunet-supervise: sbatch failed: {r.stderr.strip()}", err=True)
        sys.exit(ExitCode.GAVE_UP)
    click.echo(r.stdout.strip() if parsable else f"submitted job {r.stdout.strip()} ({script}); logs in {spec.log_dir}")


@main.command()
@CONFIG_ARG
@click.option("--user", "user_unit", is_flag=True, help="A systemd --user unit (no root needed).")
@click.option("--install", is_flag=True, help="Write it to the unit folder and reload systemd.")
@click.option("--run-as", default=None, help="System units: the user to train as (default: the current one).")
def systemd(config: Path, user_unit: bool, install: bool, run_as: str | None) -> None:
    """Print (or --install) a systemd unit for CONFIG: Type=notify, watchdog, resumable stop, hardening."""
    import getpass
    import subprocess

    from supervisor.deploy.systemd import enable_hint, render, spec_for, unit_name

    who = run_as or getpass.getuser()
    user = None if who == "root" else who
    if _experiment(config, "systemd"):
        from supervisor.experiment.commands import unit_spec
        from supervisor.experiment.context import ExperimentContext

        exp = _experiment_command(ExperimentContext.load, config, _document(config))
        text, name = render(unit_spec(exp, sys.executable, user, user_unit)), unit_name(exp.config_path)
    else:
        ctx = _load(config)
        text, name = render(spec_for(ctx, sys.executable, user, user_unit)), unit_name(ctx.config_path)
    if not install:
        click.echo(text, nl=False)
        return
    folder = Path.home() / ".config/systemd/user" if user_unit else Path("/etc/systemd/system")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    except OSError as exc:
        click.echo(f"nnunet-supervise: cannot write {folder / name}: {exc}", err=True)
        sys.exit(ExitCode.GAVE_UP)
    click.echo(f"wrote {folder / name}")
    reload = ["systemctl", *(["--user"] if user_unit else []), "daemon-reload"]
    try:
        subprocess.run(reload, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        click.echo(f"could not run {' '.join(reload)} ({exc}); run it yourself", err=True)
    click.echo(f"start it with: {enable_hint(name, user_unit)}")


@main.command()
@CONFIG_ARG
@click.option("--deep", is_flag=True, help="Also decompress every preprocessed training case (seconds per GB).")
def check(config: Path, deep: bool) -> None:
    """Validate the config and pre-flight the run without launching (0 ok, 2 problems)."""
    from supervisor.preflight import full_check

    if _experiment(config, "check"):
        from supervisor.experiment.commands import checks
        from supervisor.experiment.context import ExperimentContext
        from supervisor.preflight import check_disk

        exp = _experiment_command(ExperimentContext.load, config, _document(config))
        report, where = checks(exp, deep=True, data_deep=deep), exp.config_path
        check_disk(exp, report)
    else:
        ctx = _load(config)
        report, where = full_check(ctx, deep), ctx.config_path
    for note in report.notes:
        click.echo(f"ok    {note}")
    for warning in report.warnings:
        click.echo(f"WARN  {warning}")
    for problem in report.problems:
        click.echo(f"FAIL  {problem}")
    click.echo(f"{where}: " + ("ready to run" if report.ok else f"{len(report.problems)} problem(s)"))
    sys.exit(0 if report.ok else ExitCode.USAGE)


@main.command()
@CONFIG_ARG
@click.option("--dry-run", is_flag=True, help="List what would be removed and the total; remove nothing.")
@click.option("--quarantine", is_flag=True, help="Also remove the damaged files set aside in supervisor/quarantine/.")
def clean(config: Path, dry_run: bool, quarantine: bool) -> None:
    """Remove what finished folds no longer need: checkpoint_latest.pth (superseded by final), our snapshots and
    set-aside checkpoints, leftover temporaries, a finished configuration's compile cache; never final, best,
    validation or logs, nothing of a fold in progress (0 done, 1 something could not be judged, 2 bad config)."""
    from supervisor.disk.clean import clean_command

    if _experiment(config, "clean"):
        from supervisor.experiment.context import ExperimentContext

        target = _experiment_command(ExperimentContext.load, config, _document(config))
    else:
        target = _load(config)
    sys.exit(clean_command(target, dry_run, quarantine, say=click.echo))


@main.command()
@CONFIG_ARG
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write one file per manifest into this folder (default: print them).")
def kubernetes(config: Path, output: Path | None) -> None:
    """An experiment as Kubernetes Jobs: an Indexed Job over its cells, the cascade's, find_best's."""
    from supervisor.experiment import commands

    _experiment_command(commands.kubernetes, config, output)


@main.command()
@CONFIG_ARG
@click.option("--configuration", "configurations", multiple=True, help="Wait for these configurations' folds only.")
@click.option("--trainer", "trainers", multiple=True, help="A study: these trainers' folds only.")
@click.option("--plans", "plans", multiple=True, help="A study: these plans' folds only.")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
def wait(config: Path, configurations: tuple[str, ...], trainers: tuple[str, ...], plans: tuple[str, ...],
         poll_s: float) -> None:
    """Block until an experiment's folds finished (0), or one gave up (1): orders Kubernetes Jobs."""
    from supervisor.experiment import commands

    sys.exit(_experiment_command(commands.wait, config, configurations, poll_s, trainers, plans))


@main.command("find-best")
@CONFIG_ARG
def find_best(config: Path) -> None:
    """An experiment's last step alone: nnUNetv2_find_best_configuration once every fold finished (0 / 1)."""
    from supervisor.experiment import commands

    sys.exit(_experiment_command(commands.find_best, config))


@main.command()
@CONFIG_ARG
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The zip to write (an ensemble across trainers or plans: one zip per trainer x plans, named "
                   "OUTPUT with .<trainer>__<plans> before its suffix).")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
def export(config: Path, output: Path, force: bool) -> None:
    """An experiment's find_best choice as nnU-Net's model zip (nnUNetv2_export_model_to_zip), verified before it
    takes OUTPUT's name: 0 written, 1 nothing to export / refused / failed, 2 bad config."""
    from supervisor.experiment.export import export_command

    sys.exit(export_command(config, output, click.echo, force=force))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option("--against", "against", type=click.Path(path_type=Path, dir_okay=False),
              help="A run.yaml: also check trainer/configuration/fold and the network its trainer builds.")
def verify(checkpoint: Path, as_json: bool, against: Path | None) -> None:
    """Verify one checkpoint file (0 usable, 1 not): zip structure and CRCs, content, and compatibility."""
    from supervisor.checkpoints.verdict import describe
    from supervisor.checkpoints.verify import expectations, network_request, verify_file
    from supervisor.command import helper_env

    expect: dict[str, Any] = {}
    network = None
    env: dict[str, str] = dict(os.environ)
    if against is not None:
        ctx = _load(against)
        expect, network, env = expectations(ctx), network_request(ctx), helper_env(ctx)
    verdict, ok = verify_file(checkpoint, expect, network, env)
    click.echo(json.dumps({**verdict.to_json(), "ok": ok}, indent=2) if as_json else describe(verdict, ok))
    sys.exit(0 if ok else 1)


@main.command()
@CONFIG_ARG
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None,
              help="Return only once the supervisor has exited (at most this many seconds).")
def stop(config: Path, wait_s: float | None) -> None:
    """Ask the run's live supervisor to stop resumably (as SIGTERM does; for UPS hooks and people). 0 sent, 1 not."""
    from supervisor.observe.control import request_stop

    stopped_preprocessing = _stop_preprocessing(config, wait_s)
    if _experiment(config, "stop"):
        from supervisor.experiment import commands

        if stopped_preprocessing and not _plans_exist(config):
            return  # the experiment has not begun (experiment.preprocess): nothing else runs
        try:
            commands.stop(config, wait_s)
        except SupervisorError as exc:
            if stopped_preprocessing:
                return
            click.echo(f"nnunet-supervise: {exc}", err=True)
            sys.exit(exc.exit_code if isinstance(exc, ConfigError) else 1)
        return
    ctx = _load(config)
    try:
        pid = request_stop(ctx, reason="nnunet-supervise stop", wait_s=wait_s)
    except SupervisorError as exc:
        if stopped_preprocessing:
            return
        click.echo(f"nnunet-supervise: {exc}", err=True)
        sys.exit(1)
    click.echo(f"asked supervisor pid {pid} to stop resumably{' ; it has exited' if wait_s is not None else ''}")


@main.command()
@CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def status(config: Path, as_json: bool) -> None:
    """Show the run's state from its run directory (works while running and after)."""
    from supervisor.observe.status import gather, text

    pre = _preprocess_state(config)
    if _experiment(config, "status"):
        from supervisor.experiment import commands

        if pre is not None and pre["state"] != "finished" and not _plans_exist(config):
            # preprocessing first (experiment.preprocess): the experiment has nothing else to show yet
            click.echo(json.dumps({"preprocessing": pre}, indent=2) if as_json else _preprocess_line(pre))
            return
        if pre is not None and not as_json:
            click.echo(_preprocess_line(pre))
        _experiment_command(commands.status, config, as_json, {"preprocessing": pre} if pre else {})
        return
    ctx = _load(config)
    layout = ctx.layout
    live = RunLock(layout.lock_file).is_held_elsewhere()
    info = gather(layout, live)
    if pre is not None:
        info["preprocessing"] = pre
    pred = _predict_state(config)
    if pred is not None:
        info["predict"] = pred
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    if pre is not None:
        click.echo(_preprocess_line(pre))
    click.echo(text(info, layout.fold_dir))
    if pred is not None:
        failed = f", failed: {', '.join(pred['cases_failed'])}" if pred["cases_failed"] else ""
        click.echo(f"prediction: {pred['state']}{'' if pred['live'] else ' (no supervisor)'}, attempt "
                   f"{pred['attempt']}, {pred['cases_done']}/{pred['cases_total']} cases{failed} ({pred['output']})")


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def doctor(config: Path | None, as_json: bool) -> None:
    """What an nnU-Net problem report needs (Python, torch with CUDA and cuDNN, the NVIDIA driver, the libraries'
    versions, /dev/shm, the CPUs and memory really given, free disk under the nnU-Net folders of CONFIG or the
    environment) and the known-bad combinations, each with its upstream issue. Exit 0 fine, 1 a known problem."""
    from supervisor.observe import doctor as doc

    if config is not None and not config.is_file():
        _fail(ConfigError([f"no such file: {config}"], str(config)))
    found = doc.report(doc.gather(config))
    click.echo(json.dumps(found, indent=2, default=str) if as_json else doc.text(found))
    sys.exit(found["exit_code"])


def _bundle_sources(config: Path) -> tuple[list[Any], list[str]]:
    """The run directories a bundle of CONFIG packs: a run.yaml's fold and prediction, an experiment's own folder,
    every cell's fold and its prediction, and a supervised preprocessing where there is one."""
    from supervisor.expfile import is_experiment
    from supervisor.observe import bundle as b
    from supervisor.stages.preprocessing.context import PreprocessContext

    try:
        document = _document(config)
        whole = is_experiment(document)
    except SupervisorError as exc:
        return [], [f"the config could not be read, so no run directory was found: {exc}"]
    sources: list[Any] = []
    notes: list[str] = []
    if whole:
        from supervisor.experiment.context import ExperimentContext

        try:
            ectx = ExperimentContext.load(config, document)
        except SupervisorError as exc:
            notes.append(f"the experiment could not be resolved: {exc}")
        else:
            sources.append(b.experiment_source(ectx.layout.root))
            sources += [b.run_source(cell.name, ectx.fold_layout(cell)) for cell in ectx.cells]
            if ectx.predicts:
                sources += b.prediction_sources("prediction", ectx.predict_layout())
    else:
        sources, notes = b.config_sources(config, document)
    try:
        pre = PreprocessContext.load(config, document).layout
        if pre.supervisor_dir.is_dir():
            sources.append(b.run_source("preprocessing", pre))
    except SupervisorError:
        pass  # no raw dataset or nnUNet_raw here: preprocessing is not this machine's business
    return sources, notes


@main.command()
@CONFIG_ARG
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The bundle to write, e.g. report.tar.gz.")
@click.option("--no-doctor", is_flag=True, help="Leave out the doctor's report (it imports torch in a subprocess).")
def bundle(config: Path, output: Path, no_doctor: bool) -> None:
    """Pack what an issue report needs into one .tar.gz: the config, state.json, events.jsonl, the last lines of
    every attempt log with the first real traceback of each, nnU-Net's training log, the doctor's report, and a
    README.txt listing them; paths under $HOME read ~. An experiment file: its own folder and every fold's; a predict
    section: the prediction's run directory too."""
    from supervisor.observe import bundle as b
    from supervisor.observe import doctor as doc

    if not config.is_file():
        _fail(ConfigError([f"no such file: {config}"], str(config)))
    sources, notes = _bundle_sources(config)
    report = None if no_doctor else doc.report(doc.gather(config))
    try:
        readme = b.write_bundle(output, config, sources, report, None if report is None else doc.text(report),
                                notes=notes)
    except OSError as exc:
        click.echo(f"nnunet-supervise: cannot write {output}: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    missing = readme[readme.index("Missing or damaged:") + 1:] if "Missing or damaged:" in readme else []
    click.echo(f"bundle: {output} ({output.stat().st_size / 1024:.0f} KiB, {len(sources)} run director"
               f"{'y' if len(sources) == 1 else 'ies'})")
    for line in missing:
        click.echo(f"  missing or damaged: {line.strip()}")


def _stop_preprocessing(config: Path, wait_s: float | None) -> bool:
    """Ask a live supervised preprocessing or prediction of this file to stop resumably; was one asked?"""
    from supervisor.config import parse_config
    from supervisor.layout import PredictLayout, RunFiles
    from supervisor.observe.control import request_stop
    from supervisor.stages.preprocessing.context import PreprocessContext

    layouts: list[tuple[str, RunFiles]] = []
    try:
        layouts.append(("preprocessing", PreprocessContext.load(config, _document(config)).layout))
    except SupervisorError:
        pass
    try:
        out = parse_config(_document(config), str(config)).predict.output
        if out is not None:
            layouts.append(("prediction", PredictLayout((config.resolve().parent / out).resolve())))
    except SupervisorError:
        pass
    asked = False
    for what, layout in layouts:
        if not RunLock(layout.lock_file).is_held_elsewhere():
            continue
        try:
            pid = request_stop(layout, reason="nnunet-supervise stop", wait_s=wait_s)
        except SupervisorError as exc:
            click.echo(f"nnunet-supervise: {exc}", err=True)
            continue
        click.echo(f"asked the {what}'s supervisor pid {pid} to stop resumably"
                   + (" ; it has exited" if wait_s is not None else ""))
        asked = True
    return asked


def _preprocess_state(config: Path) -> dict[str, Any] | None:
    """Where a supervised preprocessing of this file's dataset stands (its state.json), or None: never run."""
    from supervisor.rundir.statefile import StateStore
    from supervisor.stages.preprocessing.context import PreprocessContext

    try:
        layout = PreprocessContext.load(config, _document(config)).layout
    except SupervisorError:
        return None  # no raw dataset or nnUNet_raw here: preprocessing is not this machine's business
    doc = StateStore(layout.state_file).load()
    if not doc:
        return None
    found = doc.get("preprocess")
    pre: dict[str, Any] = found if isinstance(found, dict) else {}
    return {"state": doc.get("state"), "live": RunLock(layout.lock_file).is_held_elsewhere(),
            "attempt": doc.get("attempt"), "restarts": doc.get("restarts"), "step": doc.get("step"),
            "cases_done": pre.get("cases_done"), "cases_total": pre.get("cases_total"),
            "run_dir": str(layout.supervisor_dir)}


def _predict_state(config: Path) -> dict[str, Any] | None:
    """Where the supervised prediction of this file's predict section stands (its state.json, its parts'), or
    None."""
    from supervisor.config import parse_config
    from supervisor.layout import PredictLayout
    from supervisor.observe.prediction import parts_status, run_status, summed

    try:
        cfg = parse_config(_document(config), str(config))
    except SupervisorError:
        return None
    if cfg.predict.output is None:
        return None
    layout = PredictLayout((config.resolve().parent / cfg.predict.output).resolve())
    whole, parts = run_status(layout), parts_status(layout, pipeline=False)
    if whole is None and not parts:
        return None
    if whole is None:  # the parts run, the whole has not begun
        whole = {"state": "running in parts", "attempt": None, "restarts": None, "output": str(layout.output),
                 **summed(parts)}
    if parts:
        whole["parts"] = parts
    return whole


def _preprocess_line(pre: dict[str, Any]) -> str:
    done, total = pre.get("cases_done"), pre.get("cases_total")
    cases = f"{done}/{total} cases" if total else f"{done or 0} cases"
    step = f", {pre['step']}" if pre.get("step") and pre.get("state") != "finished" else ""
    live = "" if pre.get("live") or pre.get("state") in ("finished", "failed", "stopped") else " (no supervisor)"
    return (f"preprocessing: {pre.get('state')}{live}, attempt {pre.get('attempt')}, {cases}{step} "
            f"({pre['run_dir']})")


def _plans_exist(config: Path) -> bool:
    from supervisor.experiment.context import ExperimentContext

    try:
        ExperimentContext.load(config, _document(config))
    except SupervisorError:
        return False
    return True

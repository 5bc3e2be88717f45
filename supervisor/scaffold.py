"""`nnunet-supervise init run|experiment ...`: a commented run.yaml or experiment file, for those who want the file
before anything runs (issue 21).

- `init run DATASET CONFIGURATION FOLD [nnUNetv2_train's options] [-o FILE] [--force]`: the argument list of `train`
  (supervisor.trainargs), so the file holds exactly the settings `train` would write for it;
- `init experiment DATASET [-c C ...] [-f F ...] [-tr T ...] [-p P ...] [-device D] [-o FILE] [--force]`: the
  dataset's plans give the configurations (those find_best considers), `splits_final.json` the folds.

Every key the file does not set is there commented out at its default, read from the config models (supervisor.config,
supervisor.expfile), so a changed default shows up here by itself. Pure but for reading the plans and the splits and
writing the file: no torch, numpy or nnunetv2.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from supervisor.atomic import atomic_write_text
from supervisor.config import PATH_ENV_VARS, Config, NnunetCommon, PreprocessSection, parse_config
from supervisor.errors import ConfigError
from supervisor.experiment.context import KNOWN_ORDER, plans_configurations
from supervisor.expfile import ExperimentFile, parse_experiment
from supervisor.fileread import read_bytes
from supervisor.layout import resolve_dataset_name
from supervisor.trainargs import TrainArgsError
from supervisor.trainargs import parse as parse_train_args

Say = Callable[[str], None]

RUN_USAGE = ("nnunet-supervise init run DATASET CONFIGURATION FOLD [nnUNetv2_train's options] [-o FILE] [--force] "
             "(default FILE: ./run.yaml)")
EXPERIMENT_USAGE = ("nnunet-supervise init experiment DATASET [-c CONFIGURATION ...] [-f FOLD ...] [-tr TRAINER ...] "
                    "[-p PLANS ...] [-device cuda|cpu|mps] [-o FILE] [--force] (default FILE: ./experiment.yaml)")
# nnU-Net's planners for its own plans names (what `preprocess.planner` must be for them: -pl)
PLANNERS = {"nnUNetPlans": "ExperimentPlanner", "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
            "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL", "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL"}
# Values shown in a commented-out section that are examples to edit, not defaults.
EXAMPLES = {"predict.input": "/data/imagesTs", "predict.output": "/data/predictions"}
MAX_PLANS_BYTES = 64 << 20
COMMENT_COLUMN = 40
# A commented-out key: `# key: value`, one space after the #; prose never starts so (supervisor.scaffold._prose).
_KEY_LIKE = re.compile(r"^\s*# ['A-Za-z_][A-Za-z0-9_']*:(\s|$)")

# The order a person reads sections and keys in (inheritance puts a subclass's own fields last); one added to the
# models later comes after these.
SECTION_ORDER = ("experiment", "nnunet", "paths", "restart", "heartbeat", "checkpoint", "cooperative", "process",
                 "remedies", "power", "notify", "metrics", "preprocess", "predict", "kubernetes")
KEY_ORDER = ("dataset", "configuration", "fold", "input", "output")
WIDTH = 118

SECTION_NOTES = {
    "nnunet": "What to train: nnUNetv2_train's arguments.",
    "paths": "nnU-Net's folders, as the environment had them when this file was written. A key left out (or null) "
             "takes $nnUNet_raw, $nnUNet_preprocessed, $nnUNet_results at run time; a relative path counts from this "
             "file's folder.",
    "restart": "After a failed attempt the supervisor relaunches nnUNetv2_train with --c from the newest verified "
               "checkpoint, after a backoff of backoff_initial_s x 2^(n-1) for the n-th failure in a row without a "
               "new epoch (capped at backoff_max_s, plus up to 10 % jitter). It gives up (exit 1) after max_restarts "
               "relaunches, or after max_attempts_without_progress attempts in a row that reach no new epoch.",
    "heartbeat": "Hang detection: silence longer than these (no new epoch in nnU-Net's log; in cooperative mode no "
                 "heartbeat from the trainer) is a stall. The trainer's tree is stopped and relaunched.",
    "checkpoint": "Before every launch the fold's checkpoints are verified in a short subprocess (they load, their "
                  "keys and shapes fit the network the trainer builds). A corrupt one is moved into "
                  "supervisor/quarantine/ (never deleted) and the next older one is resumed from.",
    "cooperative": "Cooperative mode launches nnU-Net through the supervisor's shim (python -m supervisor.launch): "
                   "atomic checkpoint saves on the intervals below, a stop request (SIGTERM, `nnunet-supervise "
                   "stop`, a preemption) saves at the next training step and exits 75, and a heartbeat for hang "
                   "detection. Single-process training only (nnunet.num_gpus: 1).",
    "process": "How the trainer's process tree is stopped, and how much of its output each attempt keeps.",
    "remedies": "After a failure with a known cause (host OOM, a full /dev/shm, a torch.compile error, CUDA out of "
                "memory), one change for the next attempt; the README's \"Recovery by cause\".",
    "power": "A machine on battery stops the training resumably (exit 75) before the battery is empty.",
    "notify": "Notifications through apprise URLs (pip install 'nnunet-supervise[notify]'); a failing one changes "
              "nothing.",
    "metrics": "Prometheus metrics, served on a port and/or written in node_exporter's textfile format.",
    "preprocess": "`nnunet-supervise preprocess FILE`: nnU-Net's planning and preprocessing, supervised and "
                  "resumable (damaged cases found and made again).",
    "predict": "`nnunet-supervise predict FILE [-i IN] [-o OUT]`: nnUNetv2_predict with this fold's model, "
               "supervised, every output verified.",
    "experiment": "The cells: configuration x fold (a study: trainer x plans x configuration x fold), each a fold "
                  "supervisor of its own (its own run directory, lock, restarts); then "
                  "nnUNetv2_find_best_configuration over them all. Every section below is the default for each "
                  "fold.",
    "kubernetes": "How `nnunet-supervise kubernetes FILE` renders a ConfigMap and Indexed Jobs (`run` uses none of "
                  "it).",
}

KEY_NOTES = {
    "nnunet.dataset": "id or full name (DatasetXXX_Name)",
    "nnunet.configuration": "from the plans: 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres",
    "nnunet.fold": '0, 1, ... (splits_final.json; without it 0-4) or "all"',
    "nnunet.trainer": "-tr; a custom trainer's folder goes in trainer_paths",
    "nnunet.plans": "-p",
    "nnunet.device": "-device: cuda | cpu | mps",
    "nnunet.num_gpus": "-num_gpus; > 1 is DDP: cuda only, not in cooperative mode",
    "nnunet.trainer_paths": "folders with custom trainer modules (as nnUNet_extTrainer)",
    "nnunet.extra_args": "passed to nnUNetv2_train, e.g. [--npz]",
    "nnunet.env": 'extra environment for the trainer, e.g. {nnUNet_n_proc_DA: "8"}',
    "nnunet.pretrained_weights": "-pretrained_weights: the first launch only (no checkpoint yet)",
    "restart.max_restarts": "relaunches after failures, per `run`",
    "restart.backoff_initial_s": "the first delay; doubles per failure without progress",
    "restart.backoff_max_s": "the longest delay",
    "restart.max_attempts_without_progress": "attempts in a row without a new epoch, then give up",
    "restart.disk_check_s": "after a full disk: how often the free space is looked at",
    "process.stop_grace_s": "SIGTERM to the trainer's tree, this long, then SIGKILL",
    "process.attempt_log_max_mb": "attempt-N.log keeps its head and newest part; null: no cap",
    "process.attempt_logs_kept": "the first and the newest N attempt logs as they are, the rest gzipped",
    "heartbeat.startup_grace_s": "launch to the first epoch (imports, unpacking, torch.compile)",
    "heartbeat.stall_timeout_s": "silence while training; auto: 2 x the longest recent epoch",
    "heartbeat.stall_floor_s": "the least silence auto allows",
    "heartbeat.validation_grace_s": "silence allowed in the final validation",
    "heartbeat.linger_grace_s": "a trainer still running this long after it finished is stopped",
    "heartbeat.nan_loss_epochs": "epochs in a row with train_loss nan: diverged, stop (0: off)",
    "checkpoint.on_incompatible": "a checkpoint that does not fit the network: stop | warm_start",
    "checkpoint.allow_fresh_start": "may the fold start over when checkpoints existed and none is valid?",
    "checkpoint.snapshots": "verified checkpoint_latest.pth copies kept in supervisor/snapshots/",
    "checkpoint.on_changed_settings": "a resume whose epochs, lr, batch/patch size, plans or split changed: "
                                      "stop | continue",
    "cooperative.enabled": "launch through the shim (`train ... --cooperative` sets it too)",
    "cooperative.save_every_epochs": "checkpoint_latest.pth every N epochs; null: only by time",
    "cooperative.save_every_s": "also save when this long passed since the last save (at epoch ends)",
    "cooperative.snapshot_every_s": "a snapshot at a step's boundary this often: a crash costs <= this + a step",
    "cooperative.save_on_stop": "a stop saves after the step in flight (step) or at the epoch end (epoch)",
    "cooperative.stop_timeout_s": "how long a stop waits for the save; auto: 2 x the longest epoch + 60 s",
    "power.battery_stop_percent": "on battery at or below this charge: stop resumably; null: never",
    "power.check_every_s": "how often the battery is read",
    "metrics.port": "serve Prometheus metrics on this port; null: none",
    "metrics.host": "the address it listens on (0.0.0.0: beyond this machine)",
    "metrics.textfile": "or write them in node_exporter's textfile format to this path",
    "notify.urls": 'apprise URLs, e.g. ["mailto://user:pass@example.com", "ntfy://topic"]',
    "notify.on": "the events that notify",
    "notify.repeated_failures": "failed attempts in a row that make one notification",
    "remedies.enabled": "false: every relaunch exactly as the first",
    "remedies.workers": "host OOM, dying workers, a full /dev/shm: halve nnUNet_n_proc_DA",
    "remedies.min_workers": "the floor of that halving (0: augmentation in the main process)",
    "remedies.compile": "a torch.compile failure: nnUNet_compile=f",
    "remedies.cuda_alloc": "CUDA out of memory: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
    "remedies.batch_size": "CUDA out of memory, opt-in, cooperative mode only: halve the batch size",
    "remedies.min_batch_size": "the floor of that halving",
    "remedies.override_user": "may a remedy change a variable you set (nnunet.env, your environment)?",
    "remedies.weights_only": "torch >= 2.6 refuses a checkpoint ours loaded safely: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1",
    "remedies.fit_allocation": "fit nnU-Net's worker counts to the CPUs and memory given, unless you set them",
    "preprocess.configurations": "null: nnunet.configuration",
    "preprocess.planner": "-pl: the planner that writes nnunet.plans",
    "preprocess.num_processes": "-np; null: nnU-Net's 4, fitted to the CPUs given",
    "preprocess.verify_dataset_integrity": "nnU-Net's --verify_dataset_integrity",
    "preprocess.stall_floor_s": "the least silence allowed between two cases written",
    "preprocess.step_grace_s": "silence allowed in the fingerprint and planning steps",
    "predict.input": "nnU-Net's input layout (CASE_0000.nii.gz, ...); or -i",
    "predict.output": "where the segmentations go; or -o",
    "predict.folds": "-f; null: nnunet.fold",
    "predict.checkpoint": "-chk",
    "predict.save_probabilities": "--save_probabilities (the .npz and .pkl verified too)",
    "predict.extra_args": "passed to nnUNetv2_predict, e.g. [-step_size, '0.5']",
    "predict.stall_floor_s": "the least silence allowed between two outputs written",
    "predict.parts": "the input in this many parts, a supervised predictor each; auto: one",
    "experiment.configurations": "null: every configuration in the plans with its preprocessed data",
    "experiment.trainers": "a study: several trainers; null: nnunet.trainer",
    "experiment.plans": "a study: several plans; null: nnunet.plans",
    "experiment.folds": "the folds of each configuration",
    "experiment.devices": "where the folds run, how many at once",
    "experiment.devices.gpus": "auto: every GPU NVML sees; or [0, 1], or [\"GPU-...\"]",
    "experiment.devices.per_gpu": "folds sharing a GPU: auto packs by memory; or a number",
    "experiment.devices.slots": "with device cpu (or mps): folds at once",
    "experiment.devices.memory_margin": "auto packing: headroom over a fold's estimated/measured peak",
    "experiment.find_best": "nnUNetv2_find_best_configuration once every fold finished",
    "experiment.npz": "--npz for every fold, so that find_best can ensemble",
    "experiment.preprocess": "`run` runs `nnunet-supervise preprocess` first (done and verified: at once)",
    "experiment.fold_restarts": "a fold supervisor that crashed (exit 70) is started again",
    "kubernetes.image": "your image: nnU-Net, torch and nnunet-supervise installed",
    "kubernetes.parallelism": "pods at once; null: from experiment.devices",
    "kubernetes.shm_size": "/dev/shm as memory (a container's 64 MB kills nnU-Net's workers)",
    "kubernetes.cpu": 'requests per pod, e.g. "8"',
    "kubernetes.memory": 'e.g. "64Gi"',
    "kubernetes.volumes": "nnUNet_raw/_preprocessed/_results: {pvc: NAME} or {host_path: DIR}",
}
EXPERIMENT_KEY_NOTES = {
    "preprocess.configurations": "null: experiment.configurations (none: nnU-Net's 2d 3d_fullres 3d_lowres)",
    "predict.folds": "an experiment predicts with the folds find_best used: leave it out",
    "predict.parts": "the input in this many parts, a supervised predictor each; auto: one per GPU",
}


class ScaffoldError(ValueError):
    """What is wrong with the command line or the environment; the message names it."""


# ---------------------------------------------------------------------------------------------------- rendering


def _prose(text: str, indent: int = 0, width: int = WIDTH - 2) -> list[str]:
    """A comment, wrapped; a line that would read as a commented-out key ("# word: ...") gets a second space."""
    pad = " " * indent
    lines = textwrap.wrap(text, width=width - indent - 2, break_on_hyphens=False) or [""]
    return [(f"{pad}#  {line}" if _KEY_LIKE.match(f"{pad}# {line}") else f"{pad}# {line}").rstrip() for line in lines]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (or an optional one), if it holds one; not a mapping or list of models."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    found = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    return found[0] if len(found) == 1 else None


def _flow(value: Any) -> str:
    """A value as YAML in one line (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _key(name: str) -> str:
    """`name:` as YAML writes the key (quoted where YAML 1.1 would read it as something else: 'on')."""
    return f"{_flow(name)}:"


def _value(name: str, value: Any) -> str:
    """`name: value` in one line."""
    return f"{_key(name)} {_flow(value)}"


def _line(indent: int, text: str, note: str | None, commented: bool) -> list[str]:
    """One key's line, its note beside it, or above it where the line would be too long."""
    head = " " * indent + ("# " if commented else "") + text
    if not note:
        return [head]
    line = f"{head.ljust(max(COMMENT_COLUMN, len(head) + 2))}# {note}"
    return [line] if len(line) <= WIDTH else [*_prose(note, indent), head]


def _default(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].get_default(call_default_factory=True)


def _fields(model: type[BaseModel], top: bool = False) -> list[str]:
    names = list(model.model_fields)
    first = [n for n in (SECTION_ORDER if top else KEY_ORDER) if n in names]
    return first + [n for n in names if n not in first]


def _render(model: type[BaseModel], given: Mapping[str, Any], path: str, indent: int, notes: Mapping[str, str],
            skip: frozenset[str] = frozenset(), plain: bool = False) -> list[str]:
    """The keys of one section: those in `given` as they are, every other one commented out at the model's default
    (plain: not commented, for a block the caller comments out whole)."""
    out: list[str] = []
    for name in _fields(model):
        if name in skip:
            continue
        key = f"{path}.{name}" if path else name
        sub = _submodel(model.model_fields[name].annotation)
        if name in given:
            value = given[name]
            if sub is not None and isinstance(value, Mapping):
                out += _line(indent, _key(name), notes.get(key), False)
                out += _render(sub, value, key, indent + 2, notes, plain=plain)
            else:
                out += _line(indent, _value(name, value), notes.get(key), False)
        elif sub is not None:  # a nested section at its defaults: commented out whole
            block = [*_line(0, _key(name), notes.get(key), False), *_render(sub, {}, key, 2, notes, plain=True)]
            out += [" " * indent + ("" if plain else "# ") + line for line in block]
        else:
            out += _line(indent, _value(name, _default(model, name)), notes.get(key), not plain)
    return out


def _sections(model: type[BaseModel], doc: Mapping[str, Any], notes: Mapping[str, str],
              special: Mapping[str, list[str]] | None = None,
              skip: Mapping[str, frozenset[str]] | None = None) -> list[str]:
    """Every top-level section of `model`: its comment, its header, its keys (`special`: a section's lines made by the
    caller instead)."""
    out: list[str] = []
    for name in _fields(model, top=True):
        sub = _submodel(model.model_fields[name].annotation)
        assert sub is not None, name  # every top-level key of a run.yaml or an experiment file is a section
        out.append("")
        if special and name in special:  # its comment included
            out += special[name]
            continue
        out += _prose(SECTION_NOTES.get(name) or (sub.__doc__ or name).strip().splitlines()[0])
        out.append(_key(name))
        out += _render(sub, doc.get(name, {}), name, 2, notes, skip=(skip or {}).get(name, frozenset()))
    return out


# ---------------------------------------------------------------------------------------------------- run.yaml


def _environment_paths(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """nnU-Net's folders from the environment, absolute, as `train` writes them."""
    return {k: str((cwd / environ[k]).resolve()) for k in PATH_ENV_VARS if environ.get(k)}


def _require_paths(paths: Mapping[str, str], what: str) -> None:
    missing = [k for k in PATH_ENV_VARS[1:] if k not in paths]
    if missing:
        raise ScaffoldError("; ".join(f"${k} is not set: {what} needs it too" for k in missing))


def _dataset_name(dataset: Union[int, str], paths: Mapping[str, str]) -> str:
    """The DatasetXXX_Name folder, by id or name, in nnU-Net's folders; ScaffoldError naming where it looked."""
    roots = [Path(paths[k]) for k in ("nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results") if k in paths]
    try:
        name = resolve_dataset_name(dataset, roots)
    except ConfigError as exc:
        raise ScaffoldError("; ".join(exc.problems)) from None
    if not any((root / name).is_dir() for root in roots):
        raise ScaffoldError(f"nnunet.dataset: no folder {name} in " + ", ".join(str(r) for r in roots))
    return name


def run_document(args: list[str], cwd: Path, environ: Mapping[str, str]) -> tuple[dict[str, Any], str, list[str]]:
    """The run.yaml `train ARGS` writes (its document), the dataset's folder name, and the notes on the mapping."""
    try:
        req = parse_train_args(args, cwd)
    except TrainArgsError as exc:
        raise ScaffoldError(str(exc).replace("Usage: nnunet-supervise train DATASET CONFIGURATION FOLD [options]",
                                             f"Usage: {RUN_USAGE}")
                            + "; init run's own: -o FILE (default ./run.yaml), --force (overwrite it)") from None
    if req.write_only:
        raise ScaffoldError("--write-only: `init run` only writes the file anyway (`nnunet-supervise train ... "
                            "--write-only` writes it into the fold's folder instead)")
    paths = _environment_paths(environ, cwd)
    _require_paths(paths, "nnUNetv2_train")
    name = _dataset_name(req.doc["nnunet"]["dataset"], paths)
    notes = list(req.notes)
    if req.validate_only:
        notes.append("--val is not a key of the file: `run` on a fold whose training finished (checkpoint_final.pth) "
                     "runs only its final validation")
    return {**req.doc, "paths": paths}, name, notes


def run_text(doc: Mapping[str, Any], args: list[str], dataset_name: str, target: str, when: str) -> str:
    """The commented run.yaml of `doc` (a document `train` would write)."""
    nn = doc["nnunet"]
    notes = {**KEY_NOTES, "nnunet.dataset": f"id or full name: {dataset_name}"}
    if nn.get("num_gpus", 1) != 1:
        notes["cooperative.enabled"] = "needs nnunet.num_gpus: 1 (DDP runs without the shim)"
    head = [
        "# nnunet-supervise run.yaml: one nnU-Net fold, supervised (relaunched with --c after a crash, its "
        "checkpoints verified).",
        *_prose(f"Written by `nnunet-supervise init run {shlex.join(args)}` on {when}: the settings "
                f"`nnunet-supervise train {shlex.join(args)}` writes and runs."),
        "#",
        f"#   nnunet-supervise check {target}    # validate and pre-flight (dataset, plans, trainer, disk, GPU); "
        "launches nothing",
        f"#   nnunet-supervise run {target}      # supervise the training (or just: nnunet-supervise {target})",
        "#   (`status`, `stop`, `report`, `systemd`, `slurm` take this file too)",
        "#",
        '# A line "# key: value" is an optional key at its default: uncomment it to change it. Every key and what',
        "# it means: `nnunet-supervise schema`, and the README's config reference.",
    ]
    return "\n".join(head + _sections(Config, doc, notes)) + "\n"


def _output(out: str | None, cwd: Path, default: str) -> Path:
    target = cwd / (out or default)
    return target / default if target.is_dir() else target


def _shown(path: Path, cwd: Path) -> str:
    try:
        return shlex.quote(str(path.resolve().relative_to(cwd.resolve())))
    except ValueError:
        return shlex.quote(str(path))


def _write(target: Path, text: str, force: bool) -> None:
    """Write the file; ScaffoldError when it exists (without force) or cannot be written."""
    if target.exists() and not force:
        raise ScaffoldError(f"{target} exists; not overwritten (--force overwrites it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if force:
            atomic_write_text(target, text)
        else:
            with open(target, "x", encoding="utf-8") as f:  # exclusive: never over a file made meanwhile
                f.write(text)
    except FileExistsError:
        raise ScaffoldError(f"{target} exists; not overwritten (--force overwrites it)") from None
    except OSError as exc:
        raise ScaffoldError(f"cannot write {target}: {exc.strerror or exc}") from None


def _own_options(args: list[str], usage: str) -> tuple[list[str], str | None, bool]:
    """(the rest, -o FILE, --force): init's own options, taken out of an argument list that is otherwise nnU-Net's."""
    rest: list[str] = []
    out: str | None = None
    force = False
    it = iter(args)
    for a in it:
        if a in ("-o", "--output"):
            out = next(it, None)
            if out is None:
                raise ScaffoldError(f"{a} needs a file name. Usage: {usage}")
        elif a.startswith("--output="):
            out = a.split("=", 1)[1]
        elif a == "--force":
            force = True
        else:
            rest.append(a)
    return rest, out, force


def _refused(command: str, exc: ScaffoldError | ConfigError, say: Say) -> int:
    """A usage or config problem, said; exit 2."""
    if isinstance(exc, ConfigError):
        say(f"nnunet-supervise {command}: invalid settings ({exc.source}):")
        for p in exc.problems:
            say(f"  - {p}")
    else:
        say(f"nnunet-supervise {command}: {exc}")
    return 2


def init_run(args: list[str], cwd: Path, environ: Mapping[str, str], say: Say, when: str | None = None) -> int:
    """`nnunet-supervise init run DATASET CONFIGURATION FOLD [nnUNetv2_train's options] [-o FILE] [--force]`: 0 the
    file written, 2 a usage or config problem (said)."""
    try:
        rest, out, force = _own_options(args, RUN_USAGE)
        doc, name, notes = run_document(rest, cwd, environ)
        parse_config(doc, f"nnunet-supervise init run {shlex.join(rest)}")
        fold = doc["nnunet"]["fold"]
        if isinstance(fold, int):  # as init experiment's -f: a fold the dataset's splits_final.json does not have
            facts = ExperimentFacts(name)
            _folds([fold], Path(doc["paths"]["nnUNet_preprocessed"]) / name, facts, given_as="FOLD")
            notes += facts.notes
        target = _output(out, cwd, "run.yaml")
        shown = _shown(target, cwd)
        text = run_text(doc, rest, name, shown, when or time.strftime("%Y-%m-%d %H:%M:%S"))
        parse_config(yaml.safe_load(text), str(target))  # what was generated is a valid run.yaml, always
        _write(target, text, force)
    except (ScaffoldError, ConfigError) as exc:
        return _refused("init run", exc, say)
    for note in notes:
        say(f"nnunet-supervise init run: {note}")
    say(f"nnunet-supervise init run: wrote {target}")
    say(f"next: nnunet-supervise check {shown}   then: nnunet-supervise run {shown}")
    return 0


# ---------------------------------------------------------------------------------------------------- experiment


@dataclass
class ExperimentArgs:
    """init experiment's command line."""

    dataset: Union[int, str]
    configurations: list[str] = field(default_factory=list)
    folds: list[Union[int, str]] = field(default_factory=list)
    trainers: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    device: str = "cuda"
    output: str | None = None
    force: bool = False


def parse_experiment_args(args: list[str]) -> ExperimentArgs:
    """nnU-Net's own spelling (-c, -f, -tr, -p, -device, as nnUNetv2_find_best_configuration takes them): each of
    -c -f -tr -p with several values, or given several times; ScaffoldError with the usage."""
    many = {"-c": "configurations", "-f": "folds", "-tr": "trainers", "-p": "plans"}
    one = {"-device": "device", "-o": "output", "--output": "output"}
    lists: dict[str, list[str]] = {v: [] for v in many.values()}
    single: dict[str, str] = {}
    force = False
    positional: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        flag, eq, val = a.partition("=")
        if a in many:
            taken = []
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                i += 1
                taken.append(args[i])
            if not taken:
                raise ScaffoldError(f"{a} needs at least one value. Usage: {EXPERIMENT_USAGE}")
            lists[many[a]] += taken
        elif flag in one and (eq or a == flag):
            if not eq:
                i += 1
                if i >= len(args):
                    raise ScaffoldError(f"{flag} needs a value. Usage: {EXPERIMENT_USAGE}")
                val = args[i]
            single[one[flag]] = val
        elif a == "--force":
            force = True
        elif a.startswith("-") and len(a) > 1:
            raise ScaffoldError(f"not an option of init experiment: {a}. Usage: {EXPERIMENT_USAGE}")
        else:
            positional.append(a)
        i += 1
    if len(positional) != 1:
        raise ScaffoldError(("the dataset (an id or DatasetXXX_Name) is missing" if not positional else
                             f"one dataset, got {' '.join(positional)}") + f". Usage: {EXPERIMENT_USAGE}")
    device = single.get("device", "cuda")
    if device not in ("cuda", "cpu", "mps"):
        raise ScaffoldError(f"-device {device}: cuda, cpu or mps")
    folds: list[Union[int, str]] = []
    for f in lists["folds"]:
        if not (f.isdigit() or f == "all"):
            raise ScaffoldError(f"-f {f}: a fold number 0, 1, 2, ... or all")
        folds.append(int(f) if f.isdigit() else f)
    d = positional[0]
    return ExperimentArgs(int(d) if d.isdigit() else d, lists["configurations"], folds, lists["trainers"],
                          lists["plans"], device, single.get("output"), force)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_bytes(path, MAX_PLANS_BYTES, what))
    except (OSError, ValueError) as exc:
        raise ScaffoldError(f"cannot read {path} ({exc})") from None


def _distinct(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


@dataclass
class ExperimentFacts:
    """Where the experiment file's settings came from, for its comments and the messages."""

    dataset_name: str
    plans_read: list[Path] = field(default_factory=list)
    missing_plans: list[Path] = field(default_factory=list)
    missing_data: list[str] = field(default_factory=list)  # "CONFIGURATION (PLANS: FOLDER)" without its data
    others: list[str] = field(default_factory=list)  # configurations in the plans that are not trained
    configurations_from: str = ""
    folds_from: str = ""
    notes: list[str] = field(default_factory=list)  # for stderr


def _default_configurations(available: list[dict[str, dict[str, Any]]]) -> list[str]:
    """What find_best considers by default that every plans file has; the cascade only with its 3d_lowres."""
    chosen: list[str] = []
    for c in KNOWN_ORDER:
        if all(c in a for a in available) and all(
                not isinstance(a[c].get("previous_stage"), str) or a[c]["previous_stage"] in chosen for a in available):
            chosen.append(c)
    return chosen


def _configurations(asked: list[str], available: list[dict[str, dict[str, Any]]], facts: ExperimentFacts) -> list[str]:
    """The configurations to train, from -c (checked against every plans file read) or the plans."""
    every = _distinct([c for a in available for c in a])
    if asked:
        for c in asked:
            lacking = [f.name for f, a in zip(facts.plans_read, available, strict=True) if c not in a]
            if lacking:
                raise ScaffoldError(f"-c {c}: not in {', '.join(lacking)} (in {facts.plans_read[0].parent}); "
                                    f"available: {', '.join(every) or 'none'}")
        chosen = list(asked)
        facts.configurations_from = "-c"
    else:
        chosen = _default_configurations(available)
        if not chosen:
            raise ScaffoldError(f"none of {', '.join(KNOWN_ORDER)} is in " + ", ".join(map(str, facts.plans_read))
                                + f" (available: {', '.join(every) or 'none'}); name the configurations with -c")
        facts.configurations_from = "the plans: what find_best considers"
    facts.others = [c for c in every if c not in chosen]
    return chosen


def _folds(asked: list[Union[int, str]], dataset_dir: Path, facts: ExperimentFacts,
           given_as: str = "-f") -> list[Union[int, str]]:
    """-f, else one fold per split of splits_final.json, else nnU-Net's 0-4."""
    splits = dataset_dir / "splits_final.json"
    n_splits: int | None = None
    if splits.is_file():
        try:
            loaded = _read_json(splits, "splits_final.json")
        except ScaffoldError as exc:
            facts.notes.append(f"{exc}: folds 0-4")
        else:
            if isinstance(loaded, list) and loaded:
                n_splits = len(loaded)
            else:
                facts.notes.append(f"{splits} is not a list of splits: folds 0-4")
    if asked:
        folds = _distinct(asked)
        if n_splits is not None:
            beyond = [str(f) for f in folds if isinstance(f, int) and f >= n_splits]
            if beyond:
                raise ScaffoldError(f"{given_as} {' '.join(beyond)}: {splits} has {n_splits} folds (0-{n_splits - 1}) "
                                    "and \"all\"")
        facts.folds_from = "from -f"
        return folds
    if n_splits is not None:
        facts.folds_from = f"the {n_splits} splits of splits_final.json"
        return list(range(n_splits))
    facts.folds_from = "nnU-Net's 5 (no splits_final.json yet: the experiment writes it)"
    return list(range(5))


def experiment_document(a: ExperimentArgs, cwd: Path,
                        environ: Mapping[str, str]) -> tuple[dict[str, Any], ExperimentFacts]:
    """The experiment file's document for the command line and the dataset's plans and splits, and where each
    setting came from."""
    paths = _environment_paths(environ, cwd)
    _require_paths(paths, "an experiment")
    name = _dataset_name(a.dataset, paths)
    dataset_dir = Path(paths["nnUNet_preprocessed"]) / name
    trainers = _distinct(a.trainers) or [_default(NnunetCommon, "trainer")]
    plans_names = _distinct(a.plans) or [_default(NnunetCommon, "plans")]
    facts = ExperimentFacts(name)
    available: list[dict[str, dict[str, Any]]] = []
    for p in plans_names:
        plans_file = dataset_dir / f"{p}.json"
        if not plans_file.exists():
            facts.missing_plans.append(plans_file)
            continue
        plans = _read_json(plans_file, "plans file")
        available.append(plans_configurations(plans if isinstance(plans, dict) else {}))
        facts.plans_read.append(plans_file)
    asked = _distinct(a.configurations)
    configurations: list[str] | None
    preprocess = False
    if facts.missing_plans:  # not planned yet: nothing to read the configurations from
        configurations = asked or None
        facts.configurations_from = "-c (the plans are not there yet)" if asked else ""
        if len(plans_names) == 1:
            preprocess = True
            facts.notes.append(f"{facts.missing_plans[0]} is not there yet (the dataset is not preprocessed): the "
                               "file says experiment.preprocess: true, so `run` plans and preprocesses it first")
            raw = paths.get("nnUNet_raw")
            if raw is None:
                facts.notes.append("preprocessing reads the raw dataset from $nnUNet_raw, which is not set")
            elif not (Path(raw) / name / "dataset.json").is_file():
                facts.notes.append(f"preprocessing reads {Path(raw) / name / 'dataset.json'}, which is missing")
        else:
            facts.notes.append("not planned yet: " + ", ".join(map(str, facts.missing_plans)) + "; `preprocess` "
                               "makes one plans file (nnunet.plans) only: plan and preprocess each with "
                               "nnUNetv2_plan_and_preprocess -d ID -pl PLANNER before `run`")
    else:
        configurations = _configurations(asked, available, facts)
        for f, av in zip(facts.plans_read, available, strict=True):
            for c in configurations:
                ident = av[c].get("data_identifier")
                if not (isinstance(ident, str) and (dataset_dir / ident).is_dir()):
                    facts.missing_data.append(f"{c} ({f.stem}: {dataset_dir / str(ident)})")
        if facts.missing_data:
            preprocess = True
            facts.notes.append("not preprocessed yet: " + ", ".join(facts.missing_data) + "; the file says "
                               "experiment.preprocess: true, so `run` preprocesses them first")
    if configurations and "3d_cascade_fullres" in configurations and "3d_lowres" not in configurations:
        facts.notes.append("3d_cascade_fullres needs every 3d_lowres fold finished first: add -c 3d_lowres unless "
                           "they are")
    folds = _folds(a.folds, dataset_dir, facts)

    experiment: dict[str, Any] = {"configurations": configurations, "folds": folds}
    nn: dict[str, Any] = {"dataset": a.dataset}
    if len(trainers) > 1:
        experiment["trainers"] = trainers
    else:
        nn["trainer"] = trainers[0]
    if len(plans_names) > 1:
        experiment["plans"] = plans_names
    else:
        nn["plans"] = plans_names[0]
    nn["device"] = a.device
    experiment["devices"] = {"gpus": "auto", "per_gpu": "auto"} if a.device == "cuda" else {"slots": 1}
    if preprocess:
        experiment["preprocess"] = True
    doc: dict[str, Any] = {"experiment": experiment, "nnunet": nn, "paths": paths}
    planner = PLANNERS.get(plans_names[0])
    if preprocess and facts.missing_plans and planner is not None and planner != _default(PreprocessSection,
                                                                                            "planner"):
        doc["preprocess"] = {"planner": planner}
    return doc, facts


def _section_type(model: type[BaseModel], name: str) -> type[BaseModel]:
    sub = _submodel(model.model_fields[name].annotation)
    assert sub is not None, name
    return sub


def experiment_text(doc: Mapping[str, Any], facts: ExperimentFacts, args: list[str], target: str, when: str) -> str:
    """The commented experiment file of `doc`."""
    exp, nn = doc["experiment"], doc["nnunet"]
    name = facts.dataset_name
    notes = {**KEY_NOTES, **EXPERIMENT_KEY_NOTES, "nnunet.dataset": f"id or full name: {name}",
             "experiment.folds": facts.folds_from}
    if exp["configurations"] is None:
        notes["experiment.configurations"] = "null: what preprocessing makes (2d 3d_fullres [3d_lowres cascade])"
    else:
        notes["experiment.configurations"] = f"from {facts.configurations_from}"
    if "trainers" in exp:
        notes["experiment.trainers"] = "a study: every trainer x plans x configuration x fold"
    if "plans" in exp:
        notes["experiment.plans"] = "a study: each plans file gives its own configurations"
    if "preprocess" in doc:
        notes["preprocess.planner"] = f"-pl: the planner that writes {nn.get('plans')}"
    head = [
        f"# nnunet-supervise experiment: every configuration x fold of {name}, each fold supervised, then",
        "# nnUNetv2_find_best_configuration (and, with a predict section, its choice predicted).",
        *_prose(f"Written by `nnunet-supervise init experiment {shlex.join(args)}` on {when}."),
        "#",
        f"#   nnunet-supervise check {target}    # the cells, their order, devices, data, splits; launches nothing",
        f"#   nnunet-supervise run {target}      # train them all (or just: nnunet-supervise {target}); resumable",
        f"#   nnunet-supervise status {target}   # configuration x fold: state, epoch, device, ETA",
        "#   (`stop`, `report`, `systemd`, `slurm`, `kubernetes`, `wait`, `find-best` take this file too)",
        "#",
        '# A line "# key: value" is an optional key at its default: uncomment it to change it. Every key and what',
        "# it means: `nnunet-supervise schema --experiment`, and the README's sections on experiments.",
    ]
    if facts.plans_read:
        head += _prose("The plans read: " + ", ".join(map(str, facts.plans_read)) + ".")
    if facts.others:
        head += _prose("Also in the plans, not trained unless listed in experiment.configurations: "
                       + ", ".join(facts.others) + ".")
    if facts.missing_plans or facts.missing_data:
        head += _prose("Not preprocessed yet when this was written: "
                       + ", ".join([*map(str, facts.missing_plans), *facts.missing_data]) + ".")
    head += _prose("The experiment keeps its own state, events, fold supervisors' logs and find_best's output in "
                   f"$nnUNet_results/{name}/nnunet-supervise__{Path(shlex.split(target)[0]).stem}/ (named after "
                   "this file).")
    if exp["configurations"] and "3d_cascade_fullres" in exp["configurations"] and (
            "3d_lowres" not in exp["configurations"]):
        head += _prose("3d_cascade_fullres needs every 3d_lowres fold finished before it starts; add 3d_lowres "
                       "unless they are.")
    if exp.get("preprocess"):
        head += _prose(f"experiment.preprocess is true: `nnunet-supervise run {target}` plans and preprocesses the "
                       f"dataset first (from $nnUNet_raw/{name}); `nnunet-supervise preprocess {target}` does that "
                       "alone. A complete, verified dataset is skipped.")
    elif facts.missing_plans:
        head += _prose("Plan and preprocess every plans file before `run`: `preprocess` makes nnunet.plans only.")
    devices = ("With nnunet.device cuda each cell goes to the healthy GPU with the most room, as "
               "CUDA_VISIBLE_DEVICES for its fold (nnU-Net trains on cuda:0 of what it sees). gpus: auto is every "
               "GPU NVML sees; a list (indexes as nvidia-smi shows them, or UUIDs) uses only those."
               if nn["device"] == "cuda" else
               f"With nnunet.device {nn['device']} experiment.devices.slots folds train at once; gpus and per_gpu "
               "are for cuda.")
    predict = [*_prose("An experiment may end in a prediction: find_best's choice (its configuration or ensemble, "
                       "its postprocessing) predicted on a folder of new cases, every output verified. Uncomment "
                       "the section and set input and output for that, or later `nnunet-supervise predict "
                       f"{target} -i IN -o OUT`."),
               *["# " + line for line in ["predict:", *_render(_section_type(ExperimentFile, "predict"), {
                   k.split(".", 1)[1]: v for k, v in EXAMPLES.items() if k.startswith("predict.")}, "predict", 2,
                   notes, skip=frozenset({"folds"}), plain=True)]]]
    study = frozenset(one for one, many in (("trainer", "trainers"), ("plans", "plans")) if many in exp)
    body = _sections(ExperimentFile, doc, notes, special={"predict": predict}, skip={"nnunet": study})
    at = next(i for i, line in enumerate(body) if line.startswith("  devices:"))
    body[at:at] = _prose(devices, indent=2)
    if study:  # nnunet.trainer / nnunet.plans beside experiment.trainers / experiment.plans is refused
        at = next(i for i, line in enumerate(body) if line.startswith("  dataset:"))
        where = " and ".join(f"experiment.{many}" for one, many in (("trainer", "trainers"), ("plans", "plans"))
                             if one in study)
        named = " and ".join("trainers" if one == "trainer" else "plans" for one in sorted(study, reverse=True))
        body[at + 1:at + 1] = _prose(f"This study's {named} are in {where} (nnunet.trainer / nnunet.plans beside "
                                     "them is refused).", indent=2)
    return "\n".join(head + body) + "\n"


def init_experiment(args: list[str], cwd: Path, environ: Mapping[str, str], say: Say, when: str | None = None) -> int:
    """`nnunet-supervise init experiment DATASET [-c ...] [-f ...] [-tr ...] [-p ...] [-device D] [-o FILE]
    [--force]`: 0 the file written, 2 a usage or config problem (said)."""
    try:
        a = parse_experiment_args(args)
        doc, facts = experiment_document(a, cwd, environ)
        parse_experiment(doc, f"nnunet-supervise init experiment {shlex.join(args)}")
        target = _output(a.output, cwd, "experiment.yaml")
        shown = _shown(target, cwd)
        text = experiment_text(doc, facts, args, shown, when or time.strftime("%Y-%m-%d %H:%M:%S"))
        parse_experiment(yaml.safe_load(text), str(target))  # what was generated is a valid experiment file, always
        _write(target, text, a.force)
    except (ScaffoldError, ConfigError) as exc:
        return _refused("init experiment", exc, say)
    for note in facts.notes:
        say(f"nnunet-supervise init experiment: {note}")
    exp = doc["experiment"]
    confs = ", ".join(exp["configurations"]) if exp["configurations"] else "what preprocessing makes"
    say(f"nnunet-supervise init experiment: wrote {target} ({confs} x folds {', '.join(map(str, exp['folds']))})")
    say(f"next: nnunet-supervise check {shown}   then: nnunet-supervise run {shown}")
    return 0

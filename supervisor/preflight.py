"""Pre-flight checks for `check` (and the cheap part for `run`): everything nnU-Net would trip over later."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from supervisor.checkpoints.space import human, room_for
from supervisor.command import helper_env, trainer_command
from supervisor.config import read_document
from supervisor.context import RunContext
from supervisor.core.remedies import SHM_FIX, WORKERS_VAR, nnunet_default_workers, user_settings
from supervisor.core.sizing import MAIN_PROCESS_BYTES, worker_bytes
from supervisor.disk.estimate import DatasetFacts, estimate_experiment, estimate_run, one_checkpoint
from supervisor.errors import LaunchError, SupervisorError
from supervisor.evidence.memory import memory_cgroup
from supervisor.evidence.shm import shm_space
from supervisor.expfile import is_experiment
from supervisor.gpu.nvml import cuda_problem
from supervisor.oomscore import SUPERVISOR_SCORE, may_lower
from supervisor.preprocessed.verify import verify_preprocessed
from supervisor.rundir.lock import RunLock
from supervisor.sizing import batch_bytes, sizing_for
from supervisor.trainer.lookup import find_trainer

if TYPE_CHECKING:  # the experiment imports this module: a type only
    from supervisor.experiment.context import ExperimentContext


def available_memory() -> int | None:
    """What this run may still use: MemAvailable, or less under a memory cgroup's limit."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        avail = next(int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    cg = memory_cgroup(os.getpid())
    limit, used = (cg.limit_bytes(), cg.usage_bytes()) if cg else (None, None)
    if limit is not None and used is not None:
        avail = min(avail, max(0, limit - used))
    return avail


def oom_protection_note() -> str:
    """Whether the supervisor will outlive an OOM kill of its trainer (for `check`)."""
    if may_lower():
        return (f"oom_score_adj: the supervisor lowers its own to {SUPERVISOR_SCORE} and sets the trainer's back, so "
                "the kernel's OOM killer picks the trainer")
    return ("oom_score_adj: the supervisor may not lower its own (no CAP_SYS_RESOURCE); it raises the trainer's tree "
            "by as much instead, so the kernel's OOM killer still picks the trainer first")


@dataclass
class Report:
    """What the checks found: `problems` block a launch, `warnings` may end it early, `notes` are for information."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _load_json(path: Path, report: Report, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        report.problems.append(f"{what} not found: {path}")
    except (OSError, ValueError) as exc:
        report.problems.append(f"{what} unreadable: {path}: {exc}")
    return None


def cheap_checks(ctx: RunContext, report: Report) -> None:
    """Dataset, plans, configuration, folds, executable, results folder, disk: no subprocess."""
    nn = ctx.config.nnunet
    pre = ctx.paths.preprocessed / ctx.dataset_name
    if not pre.is_dir():
        report.problems.append(f"preprocessed dataset missing: {pre} (run nnUNetv2_plan_and_preprocess "
                               f"-d {nn.dataset} first)")
        return
    report.notes.append(f"dataset {ctx.dataset_name} in {ctx.paths.preprocessed}")
    if nn.pretrained_weights is not None:
        weights = (ctx.config_path.parent / nn.pretrained_weights).resolve()
        if not weights.is_file():
            report.problems.append(f"nnunet.pretrained_weights: {weights} is not a file (nnU-Net's "
                                   "-pretrained_weights: a checkpoint whose network fits this one but the "
                                   "segmentation heads)")
    if nn.device == "cuda":
        visible = nn.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        why = cuda_problem(visible)
        if why:
            report.problems.append(f"nnunet.device: cuda, but {why}; nnU-Net would stop with \"Found no NVIDIA "
                                   "driver on your system\" or \"No CUDA GPUs are available\". Run where an NVIDIA GPU "
                                   "and its driver are (nvidia-smi works), or set nnunet.device: cpu (slow) or mps "
                                   "(Apple silicon)")
    plans = _load_json(pre / f"{nn.plans}.json", report, f"plans '{nn.plans}'")
    dataset_json = _load_json(pre / "dataset.json", report, "dataset.json")
    if isinstance(plans, dict):
        configs = plans.get("configurations", {})
        if not isinstance(configs, dict):
            report.problems.append(f"{nn.plans}.json: its configurations are {type(configs).__name__}, not an object "
                                   "of configurations; nnU-Net cannot train from these plans")
        elif nn.configuration not in configs:
            report.problems.append(f"nnunet.configuration: '{nn.configuration}' is not in {nn.plans}.json; "
                                   f"available: {', '.join(sorted(map(str, configs)))}")
        elif not isinstance(configs[nn.configuration], dict):
            report.problems.append(f"{nn.plans}.json: configuration '{nn.configuration}' is "
                                   f"{type(configs[nn.configuration]).__name__}, not an object; nnU-Net cannot train "
                                   "from it")
        else:
            config = configs[nn.configuration]
            ident = config.get("data_identifier")
            if isinstance(ident, str) and ident and not (pre / ident).is_dir():
                report.problems.append(f"preprocessed data for {nn.configuration} missing: {pre / ident} "
                                       f"(run nnUNetv2_preprocess -d {nn.dataset} -c {nn.configuration})")
    _check_fold(ctx, pre, report)
    try:
        report.notes.append(f"trainer command {' '.join(trainer_command(ctx))}")
    except LaunchError as exc:
        report.problems.append(str(exc))
    if ctx.config.notify.urls and importlib.util.find_spec("apprise") is None:
        report.problems.append("notify.urls: notifications need apprise; pip install 'nnunet-supervise[notify]'")
    if ctx.config.cooperative.enabled and importlib.util.find_spec("nnunetv2") is None:
        report.problems.append(f"cooperative.enabled: the shim runs nnU-Net in this Python ({sys.executable}), "
                               "where nnunetv2 is not installed; `pip install nnunetv2` into it, or disable it")
    for p in ctx.trainer_paths:
        if not p.is_dir():
            report.problems.append(f"nnunet.trainer_paths: {p} is not a folder")
    # what one checkpoint's estimate needs, from the plans and dataset.json read above and nothing else: `run` calls
    # this before every launch, and a damaged value there is a note, never an exception
    try:
        plans_bytes = (pre / f"{nn.plans}.json").stat().st_size
    except OSError:
        plans_bytes = 0
    facts = DatasetFacts.from_documents(plans, dataset_json, f"{nn.plans}.json", plans_bytes)
    _check_results(ctx, facts, report)
    if isinstance(plans, dict) and isinstance(dataset_json, dict):
        _check_memory(ctx, plans, facts.channels, report)


def workers_here(ctx: RunContext) -> tuple[int, str]:
    """nnU-Net's augmentation worker count for this run, and where it comes from."""
    values, sources = user_settings(ctx.config.nnunet.env, os.environ)
    if WORKERS_VAR in values:
        try:
            return int(values[WORKERS_VAR]), f"{WORKERS_VAR} from {sources[WORKERS_VAR]}"
        except ValueError:
            pass
    if ctx.config.remedies.fit_allocation:
        fitted = sizing_for(ctx).env.get(WORKERS_VAR)
        if fitted is not None:
            return int(fitted), "fitted to this allocation"
    return nnunet_default_workers(socket.gethostname(), os.cpu_count() or 1), "nnU-Net's default here"


def _check_memory(ctx: RunContext, plans: dict[str, Any], channels: int, report: Report) -> None:
    """/dev/shm and RAM for nnU-Net's augmentation workers, estimated from the plans (said to be estimates: the
    real use depends on the cases and the transforms)."""
    configs = plans.get("configurations")
    config = configs.get(ctx.config.nnunet.configuration) if isinstance(configs, dict) else None
    if not isinstance(config, dict):
        return
    try:
        one = batch_bytes(config, channels)
    except (TypeError, ValueError, OverflowError) as exc:
        report.notes.append(f"memory: cannot estimate a batch: {ctx.config.nnunet.plans}.json's "
                            f"{ctx.config.nnunet.configuration} patch_size or batch_size is not whole numbers ({exc}); "
                            "/dev/shm and RAM not checked")
        return
    workers, where = workers_here(ctx)
    if workers > 0:
        # the train loader queues max(6, n/2) batches, the validation loader (n/2 workers) max(3, n/4); each worker
        # holds the batch it is putting
        val = max(1, workers // 2)
        in_flight = max(6, workers // 2) + workers + max(3, val // 2) + val
        need = in_flight * one
        space = shm_space()
        if space is not None and space[0] < need:
            report.warnings.append(
                f"/dev/shm is {space[0] / 2**20:.0f} MiB; {workers} augmentation workers ({where}) hand over up to "
                f"{in_flight} batches of ~{one / 2**20:.1f} MiB at once: ~{need / 2**20:.0f} MiB (an estimate). "
                f"Workers die when it is full: {SHM_FIX}; or set {WORKERS_VAR} lower (the supervisor halves it "
                "itself after such a failure)")
        else:
            report.notes.append(f"/dev/shm {space[0] / 2**30:.1f} GiB for ~{need / 2**20:.0f} MiB of batches in "
                                f"flight ({workers} workers, {where}; an estimate)" if space else "no /dev/shm here")
    # RAM: the main process (torch, the network, pinned batches) and each worker (its imports are shared after fork;
    # a case being cropped and augmented is several batches' worth)
    need_ram = MAIN_PROCESS_BYTES + workers * worker_bytes(one)
    available = available_memory()
    if available is not None and available < need_ram:
        report.warnings.append(
            f"memory: ~{need_ram / 2**30:.1f} GiB estimated for the trainer and {workers} augmentation workers "
            f"({where}), {available / 2**30:.1f} GiB available here (an estimate from the plans): the kernel may "
            f"OOM-kill a worker; the supervisor then halves {WORKERS_VAR}, or set it lower yourself")
    elif available is not None:
        report.notes.append(f"memory {available / 2**30:.1f} GiB available, ~{need_ram / 2**30:.1f} GiB estimated "
                            f"for the trainer and {workers} workers (an estimate)")


def _check_fold(ctx: RunContext, pre: Path, report: Report) -> None:
    fold = ctx.config.nnunet.fold
    if fold == "all":
        return
    splits_file = pre / "splits_final.json"
    if splits_file.is_file():
        splits = _load_json(splits_file, report, "splits_final.json")
        if isinstance(splits, list) and isinstance(fold, int) and fold >= len(splits):
            report.problems.append(f"nnunet.fold: {fold} is not in {splits_file} ({len(splits)} folds: 0-"
                                   f"{len(splits) - 1}); nnU-Net would silently train a random 80:20 split")
    elif isinstance(fold, int) and fold > 4:
        report.problems.append(f"nnunet.fold: {fold}; without splits_final.json nnU-Net makes 5 folds (0-4)")


def _check_results(ctx: RunContext, facts: DatasetFacts, report: Report) -> None:
    """The results folder writable, and room for the next launch (two more checkpoints and the logs). `facts`: of
    the plans and dataset.json only (`run` calls this before each launch: no other file of the dataset is read)."""
    probe = ctx.layout.fold_dir
    while not probe.exists():
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".nnunet-supervise-check-"):
            pass
    except OSError as exc:
        report.problems.append(f"results folder not writable: {probe}: {exc.strerror}")
        return
    nn = ctx.config.nnunet
    if facts.plans is None:  # unreadable plans: cheap_checks says so
        return
    # the largest checkpoint of this configuration (any fold), else counted from the plans' network
    notes: list[str] = []
    one = one_checkpoint(ctx.layout.fold_dir.parent, nn.configuration, facts, notes)
    report.notes += [f"disk: {n}" for n in (*facts.problems, *notes)]
    if one is None:
        return
    one_bytes, how, _ = one
    free = shutil.disk_usage(probe).free
    need = room_for(one_bytes, ctx.config.process.attempt_log_max_bytes)
    if free < need:
        report.problems.append(f"disk: not enough free space in {probe} for the next launch: {human(free)} free, it "
                               f"needs {human(need)} for two checkpoints (one is {how}) and the logs")
    else:
        report.notes.append(f"disk: the next launch needs {human(need)} free in {probe} (two checkpoints, one is "
                            f"{how}, and the logs); {human(free)} free")


def port_in_use(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on now (None: it can); tried the way the metrics server binds it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
            s.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def stall_allowances(ctx: RunContext) -> str:
    """The silences the run allows, as they will be applied (the floor applies to `auto` only)."""
    hb = ctx.config.heartbeat
    training = (f"auto (2 x the longest recent epoch, at least {hb.stall_floor_s:g} s; {hb.startup_grace_s:g} s until "
                "an epoch was timed)" if hb.stall_timeout_s == "auto" else f"{float(hb.stall_timeout_s):g} s")
    return (f"stall allowances: start-up {hb.startup_grace_s:g} s, training {training}, final validation "
            f"{hb.validation_grace_s:g} s (cases started or exported count, not other output)")


def check_preprocessed(ctx: RunContext, report: Report, deep: bool = False) -> None:
    """Every training case of the configuration whole (headers, sizes, properties), and with `deep` decompressed:
    a case cut short by a killed preprocessing otherwise crashes the training days later at a random batch."""
    nn = ctx.config.nnunet
    pre = ctx.paths.preprocessed / ctx.dataset_name
    plans = _load_json(pre / f"{nn.plans}.json", Report(), "plans")  # its problems are cheap_checks' to say
    if not isinstance(plans, dict):
        return
    found = verify_preprocessed(pre, plans, nn.configuration, deep=deep, env=helper_env(ctx))
    if found.missing_folder:
        return  # cheap_checks says so
    if found.unchecked:
        report.notes.append(f"preprocessed data in {found.folder}: {found.unchecked}; not checked")
        return
    if ctx.paths.raw is not None and (ctx.paths.raw / ctx.dataset_name / "dataset.json").is_file():
        # our supervised preprocessing sets a damaged case aside and makes only it again
        fix = (f"`nnunet-supervise preprocess {ctx.config_path}` sets the damaged cases aside and preprocesses only "
               f"them again from nnUNet_raw (`nnUNetv2_preprocess -d {nn.dataset} -c {nn.configuration} -plans_name "
               f"{nn.plans}` would delete this configuration's folder and write every case anew)")
    else:
        fix = (f"Run `nnUNetv2_preprocess -d {nn.dataset} -c {nn.configuration} -plans_name {nn.plans}` again where "
               "nnUNet_raw is (it deletes this configuration's folder and writes every case anew)")
    report.problems += found.lines(fix)
    if not found.problems:
        how = "decompressed" if deep else "headers, sizes and properties; `check --deep` decompresses them"
        report.notes.append(f"preprocessed data: {found.cases_checked} training case(s) of {nn.configuration} "
                            f"whole ({how})")


def check_disk(target: Union[RunContext, ExperimentContext], report: Report) -> None:
    """`check`'s disk: lines: what the run or the whole experiment will still write (checkpoints, validation, logs,
    the predict section's prediction) against the free space of each file system it goes to; a problem only where
    the estimate clearly exceeds what is free (supervisor.disk.estimate)."""
    try:
        found = estimate_run(target) if isinstance(target, RunContext) else estimate_experiment(target)
    except (OSError, SupervisorError) as exc:
        report.notes.append(f"disk: not estimated ({exc})")
        return
    except Exception as exc:  # a bug of ours: check and run go on without the estimate, and say so
        report.warnings.append(f"disk: not estimated: the estimate failed ({type(exc).__name__}: {exc}); this is a "
                               "bug of nnunet-supervise, please report it; the free space was not checked against "
                               "what the run will write")
        return
    # cheap_checks said what it found of the plans and dataset.json already (an experiment's per configuration)
    report.notes += [line for line in found.lines()
                     if not any(n == line or n.endswith(f": {line}") for n in report.notes)]
    report.warnings += found.warnings()
    report.problems += found.problems()


def _from_experiment(ctx: RunContext) -> bool:
    """Is this run one cell of an experiment file (whose check estimates the disk for all of it)?"""
    try:
        return is_experiment(read_document(ctx.config_path))
    except (OSError, SupervisorError):
        return False


def full_check(ctx: RunContext, deep: bool = False, disk: bool | None = None) -> Report:
    """Everything `nnunet-supervise check` reports, including the trainer lookup subprocess; `deep`: decompress
    every preprocessed case too; `disk`: the disk estimate of the whole run (None: unless ctx is a cell of an
    experiment file, whose check estimates the whole experiment with check_disk)."""
    report = Report()
    cheap_checks(ctx, report)
    if disk or (disk is None and not _from_experiment(ctx)):
        check_disk(ctx, report)
    check_preprocessed(ctx, report, deep)
    nn = ctx.config.nnunet
    found = find_trainer(nn.trainer, helper_env(ctx))
    if found.get("found"):
        report.notes.append(f"trainer {nn.trainer} found in {found.get('file')}")
    else:
        where = f" (also searched nnunet.trainer_paths: {', '.join(map(str, ctx.trainer_paths))})" \
            if ctx.trainer_paths else ""
        report.problems.append(f"nnunet.trainer: {nn.trainer} cannot be loaded{where}: {found.get('error')}")
    report.notes.append(stall_allowances(ctx))
    if ctx.config.remedies.fit_allocation:
        sizing = sizing_for(ctx)
        report.notes += [f"sizing: {line}" for line in sizing.notes]
        report.warnings += [f"sizing: {line}" for line in sizing.warnings]
    report.notes.append(oom_protection_note())
    m = ctx.config.metrics
    if m.port is not None:
        busy = port_in_use(m.host, m.port)
        if busy:
            report.problems.append(f"metrics.port: {m.host}:{m.port} cannot be served ({busy}); pick another port "
                                   "(`run` would go on without the endpoint)")
        else:
            report.notes.append(f"metrics will be served on http://{m.host}:{m.port}/metrics")
    lock = RunLock(ctx.layout.lock_file)
    if lock.is_held_elsewhere():
        holder = lock.holder() or {}
        report.notes.append(f"a supervisor is running this fold now (pid {holder.get('pid', '?')})")
    if ctx.layout.is_finished():
        report.notes.append("this fold is already finished; `run` will exit 0 without launching")
    elif ctx.layout.existing_checkpoints():
        report.notes.append("checkpoints exist; `run` will resume with --c")
    if os.environ.get("nnUNet_extTrainer") and ctx.trainer_paths:
        report.notes.append("nnunet.trainer_paths are searched before $nnUNet_extTrainer")
    return report

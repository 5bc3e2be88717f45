"""Fit nnU-Net's process counts to an allocation, before a launch: a pure rule over numbers.

    nnUNet_n_proc_DA  = min(nnU-Net's own count here, the allocated CPUs, what the memory holds after the main process)
    nnUNet_def_n_proc = min(8, the allocated CPUs, what the memory holds in the final validation), at least 1
    OMP_NUM_THREADS   = the allocated CPUs, only when fewer than the host's

A variable is set only where the fitted value differs from what nnU-Net would do by itself (so an unconstrained
workstation gets nothing), and never where the user set it (a note says what it would have set). The memory side
rests on estimates from the plans (said so wherever they decide); the reactive remedy ladder stays for what they miss.

What nnU-Net 2.8 starts, per training process (one per GPU under DDP), and what the estimates below count:
- training: the main process, `nnUNet_n_proc_DA` = n augmentation workers for the training loader and max(1, n // 2)
  for the validation loader (nnUNetTrainer.get_dataloaders; forked, so their imports are shared); n = 0 is the
  single-threaded augmenter in the main process;
- the final validation (perform_actual_validation, after on_train_end has stopped the augmenters): the main process
  predicting, and a `multiprocessing.get_context("spawn").Pool(nnUNet_def_n_proc)` exporting (each a fresh
  interpreter importing torch and nnU-Net; `resample_and_save` for a cascade's next stage runs in the same pool), then,
  once that pool is closed, compute_metrics_on_folder's spawn pool of the same size (reading two segmentations a case:
  less than an export). Each export also sets torch to `nnUNet_def_n_proc` threads, so 8 x 8 threads by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.core.remedies import EXPORT_VAR, NNUNET_DEFAULT_EXPORT, WORKERS_VAR

OMP_VAR = "OMP_NUM_THREADS"
SIZED_VARS = (WORKERS_VAR, EXPORT_VAR, OMP_VAR)

MAIN_PROCESS_BYTES = 3 << 30  # torch, nnU-Net, the network and its optimizer on CPU, the data loaders' queues
WORKER_BASE_BYTES = 300 << 20  # an augmentation worker's own pages after fork: its generator's state, numpy buffers
# One export process of the final validation, before its case. Measured on the 2-CPU, 24 GiB development VM (torch
# 2.14.1+cu130, nnunetv2 2.8.1, Python 3.11), with psutil's memory_full_info() of a worker of
# multiprocessing.get_context("spawn").Pool(1) started from a script that, like the nnUNetv2_train console script,
# imports nnunetv2.run.run_training at the top (a spawned child re-runs the main module's imports: 3913 modules):
# RSS 913 MiB, USS 517 MiB, PSS 646-711 MiB. A bare `import torch, nnunetv2.inference.export_prediction` child: RSS
# 647 MiB. The RSS counts torch's shared libraries, whose file pages the main process maps already and the kernel
# (and a cgroup) charges once; what each export process adds is its private memory, the USS: 517 MiB, rounded up.
EXPORT_BASE_BYTES = 550 << 20
# An export's case: measured the same way, one real export_prediction_from_logits of 2-class logits to a 256 x 256 x
# 160 case (10.5 M voxels) peaked 242 MiB above the worker's base (261 MiB from 160 x 160 x 100 logits, resampled up):
# about three float32 copies per class at the original shape (resampled logits, the softmax or argmax's temporaries,
# the received tensor's share) plus the received logits.
EXPORT_COPIES = 3


@dataclass(frozen=True)
class Estimates:
    """Bytes each of nnU-Net's processes is estimated to need; `from_plans`: computed from this run's plans (else
    the defaults above)."""

    main: int = MAIN_PROCESS_BYTES
    worker: int = WORKER_BASE_BYTES
    export: int = EXPORT_BASE_BYTES
    from_plans: bool = False

    @property
    def words(self) -> str:
        return "estimates from the plans" if self.from_plans else "estimates without the plans"


def batch_bytes(config: Mapping[str, Any], channels: int) -> int:
    """One augmented training batch as the workers hand it over: float32 images plus the segmentation targets at
    every deep-supervision scale (about 1.15 x one int16 target). `config`: the plans' configuration."""
    patch = math.prod(int(x) for x in config.get("patch_size", [1]))
    batch = int(config.get("batch_size", 2))
    return int(batch * patch * (4 * channels + 2 * 1.15))


def worker_bytes(batch_bytes: int) -> int:
    """An augmentation worker: its own pages plus a case being cropped and augmented (several batches' worth)."""
    return WORKER_BASE_BYTES + 10 * batch_bytes


def augmentation_processes(workers: int) -> int:
    """The worker processes nnU-Net starts for `nnUNet_n_proc_DA` = workers: the training loader's and the
    validation loader's max(1, workers // 2); none for 0 (the single-threaded augmenter)."""
    return workers + max(1, workers // 2) if workers > 0 else 0


def training_bytes(workers: int, estimates: Estimates, ranks: int = 1) -> int:
    """Memory estimated for the training: per rank, the main process and its augmentation workers."""
    return ranks * (estimates.main + augmentation_processes(workers) * estimates.worker)


def export_bytes(classes: int, case_voxels: int, preprocessed_voxels: int = 0) -> int:
    """An export process: its imports plus one case's logits resampled to the original shape (float32 per class, see
    EXPORT_COPIES) and the logits it received at the preprocessed shape."""
    return EXPORT_BASE_BYTES + 4 * max(1, classes) * (EXPORT_COPIES * max(1, case_voxels) + max(0, preprocessed_voxels))


def validation_bytes(exports: int, estimates: Estimates, ranks: int = 1) -> int:
    """Memory estimated for the final validation: per rank, the main process and its export pool."""
    return ranks * (estimates.main + exports * estimates.export)


@dataclass(frozen=True)
class Sizing:
    """What to set before the launch (`env`), why (`notes`) and what may go wrong anyway (`warnings`), in words."""

    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """For the launch event: `sized`, the variables set with their values."""
        return {"sized": dict(self.env), "notes": list(self.notes), "warnings": list(self.warnings)}

    def lines(self) -> list[str]:
        """For `check`: the notes, then the warnings marked as such."""
        return [*self.notes, *(f"WARN {w}" for w in self.warnings)]


def _largest(cap: int, floor: int, fits: Callable[[int], bool]) -> int:
    """The largest count in [floor, cap] that fits (floor where none does)."""
    for n in range(cap, floor, -1):
        if fits(n):
            return n
    return floor


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def fit(*, host_cpus: int, cpus: float, cpu_source: str, memory_bytes: int | None, memory_source: str,
        default_workers: int, estimates: Estimates, user: Mapping[str, str], ranks: int = 1,
        device: str = "cuda") -> Sizing:
    """The counts that fit.

    `host_cpus`, `cpus`, `cpu_source`, `memory_bytes` (None: not known), `memory_source`: the allocation
    (evidence/allocation.py); `default_workers`: nnU-Net's own augmentation worker count here (its table, capped at
    the host's CPU count, as nnU-Net itself does); `estimates`: bytes per process; `user`: the variables the user
    set (name -> value); `ranks`: training processes (num_gpus under DDP: each has its own workers and export pool,
    and nnUNet_n_proc_DA counts per GPU); `device`: nnU-Net's -device."""
    ranks = max(1, ranks)
    cores = max(1, int(cpus + 1e-9))  # a 2.5-CPU quota runs 2 processes flat out
    per_rank = max(1, cores // ranks)
    notes: list[str] = []
    warnings: list[str] = []
    want: dict[str, tuple[int, int, str]] = {}  # variable -> (fitted, nnU-Net's own, why)
    est = estimates.words

    cap = min(default_workers, per_rank)
    why = cpu_source if cap < default_workers else ""
    da = cap
    if memory_bytes is not None:
        da = _largest(cap, 0, lambda n: training_bytes(n, estimates, ranks) <= memory_bytes)
        if da < cap:
            why = (f"{memory_source}: ~{_gib(estimates.main)} for the main process, ~{_mib(estimates.worker)} an "
                   f"augmentation worker, each with half as many again for the validation loader; {est}")
        if da == 0 and cap > 0:
            short = "not even the trainer itself" if memory_bytes < training_bytes(0, estimates, ranks) else \
                "the trainer but not one augmentation worker"
            then = (f"your {WORKERS_VAR}={user[WORKERS_VAR]} stays, and the kernel may OOM-kill its workers (the "
                    "supervisor then halves it only with remedies.override_user)") if WORKERS_VAR in user else \
                (f"{WORKERS_VAR}=0: nnU-Net's single-threaded augmentation in the main process, slow but without "
                 "workers to run out of memory; give the job more memory (SLURM --mem, the container's limit) to "
                 "train faster")
            warnings.append(f"{memory_source} holds {short} (~{_gib(estimates.main)} for the main process, ~"
                            f"{_mib(estimates.worker)} a worker; {est}): {then}")
    want[WORKERS_VAR] = (da, default_workers, why)

    cap = min(NNUNET_DEFAULT_EXPORT, per_rank)
    why = cpu_source if cap < NNUNET_DEFAULT_EXPORT else ""
    export = cap
    if memory_bytes is not None:
        export = _largest(cap, 1, lambda n: validation_bytes(n, estimates, ranks) <= memory_bytes)
        if export < cap:
            why = (f"{memory_source}: ~{_gib(estimates.main)} for the main process, ~{_mib(estimates.export)} an "
                   f"export process in the final validation; {est}")
        if validation_bytes(1, estimates, ranks) > memory_bytes:
            warnings.append(
                f"{memory_source} is less than the final validation is estimated to need with one export process (~"
                f"{_gib(validation_bytes(1, estimates, ranks))}; {est}): it may be OOM-killed there; the checkpoint "
                "stays, and `--val` can redo the validation with more memory")
    want[EXPORT_VAR] = (export, NNUNET_DEFAULT_EXPORT, why)

    if cores < host_cpus:
        # with -device cpu nnU-Net's main process calls torch.set_num_threads(host CPUs) itself, which no variable
        # overrides: there the limit holds for the workers and the spawned processes only
        scope = "in the worker and export processes (nnU-Net's main process on -device cpu takes every host CPU " \
            "whatever this says)" if device == "cpu" else "instead of one per host CPU"
        want[OMP_VAR] = (cores, host_cpus, f"{cpu_source}; torch's and numpy's threads {scope}")

    env: dict[str, str] = {}
    for var, (value, own, reason) in want.items():
        if value == own:
            continue
        if var in user:
            notes.append(f"{var}={user[var]} is your setting; left as it is (fitted to this allocation it would be "
                         f"{value}: {reason})")
            continue
        env[var] = str(value)
        notes.append(f"{var}={value} instead of nnU-Net's {own} ({reason})")
    if not env and not notes:
        mem = f"{memory_source}" if memory_bytes is not None else "memory not known"
        notes.append(f"nnU-Net's own process counts fit this allocation ({cpu_source}; {mem}): nothing set")
    return Sizing(env, notes, warnings)

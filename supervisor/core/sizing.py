"""Fit nnU-Net's process counts to an allocation, before a launch: a pure rule over numbers.

    nnUNet_n_proc_DA  = min(nnU-Net's own count here, the allocated CPUs, what the memory holds after the main process)
    nnUNet_def_n_proc = min(8, the allocated CPUs, what the memory holds in the final validation), at least 1
    OMP_NUM_THREADS   = the allocated CPUs, only when fewer than the host's (torch would use every host core)

A variable is set only where the fitted value differs from what nnU-Net would do by itself (so an unconstrained
workstation gets nothing), and never where the user set it (the note says what it would have set). The reactive
remedy ladder stays for what these estimates miss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from supervisor.core.remedies import EXPORT_VAR, NNUNET_DEFAULT_EXPORT, WORKERS_VAR

OMP_VAR = "OMP_NUM_THREADS"
SIZED_VARS = (WORKERS_VAR, EXPORT_VAR, OMP_VAR)
DEFAULT_WORDS = {WORKERS_VAR: "nnU-Net's augmentation workers here", EXPORT_VAR: "nnU-Net's export processes",
                 OMP_VAR: "torch's threads (every host CPU)"}

MAIN_PROCESS_BYTES = 3 << 30  # torch, nnU-Net, the network and its optimizer on CPU, the data loaders' queues
WORKER_BASE_BYTES = 300 << 20  # an augmentation worker's own pages after fork: its generator's state, numpy buffers
# One export process of the final validation: nnU-Net starts them with the "spawn" context, so each imports torch and
# nnU-Net afresh. Measured here (torch 2.14, nnunetv2 2.8): 652 MiB RSS after `import torch,
# nnunetv2.inference.export_prediction` (psutil, a fresh interpreter).
EXPORT_BASE_BYTES = 650 << 20


@dataclass(frozen=True)
class Estimates:
    """Bytes each process is estimated to need (from the plans; estimates, said so)."""

    main: int = MAIN_PROCESS_BYTES
    worker: int = WORKER_BASE_BYTES
    export: int = EXPORT_BASE_BYTES


def worker_bytes(batch_bytes: int) -> int:
    """An augmentation worker: its own pages plus a case being cropped and augmented (several batches' worth)."""
    return WORKER_BASE_BYTES + 10 * batch_bytes


def export_bytes(classes: int, case_voxels: int) -> int:
    """An export process: its imports plus one case's logits resampled to the original shape (float32 per class,
    about three copies in flight: logits, resampled, probabilities)."""
    return EXPORT_BASE_BYTES + 3 * 4 * max(1, classes) * max(1, case_voxels)


@dataclass(frozen=True)
class Sizing:
    """What to set before the launch, and why, in words."""

    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [*self.notes, *self.warnings]


def fit(*, host_cpus: int, cpus: float, cpu_source: str, memory_bytes: int | None, memory_source: str,
        default_workers: int, estimates: Estimates, user: Mapping[str, str]) -> Sizing:
    """The counts that fit; `default_workers` is nnU-Net's own augmentation worker count here (its table, capped at
    the host's CPU count, as nnU-Net itself does); `user`: the variables the user set (name -> value)."""
    cores = max(1, math.floor(cpus))
    notes, warnings = [], []
    want: dict[str, tuple[int, int, str]] = {}  # variable -> (fitted, nnU-Net's own, why)

    da, why = min(default_workers, cores), f"{cpu_source}"
    if memory_bytes is not None:
        room = (memory_bytes - estimates.main) // max(1, estimates.worker)
        if room < da:
            da, why = max(0, room), f"{memory_source}; ~{estimates.worker / 2**20:.0f} MiB a worker after "\
                                    f"~{estimates.main / 2**30:.1f} GiB for the main process (estimates)"
        if room < 1:
            warnings.append(f"{memory_source} holds the trainer (~{estimates.main / 2**30:.1f} GiB estimated) but not "
                            "one augmentation worker: 0 workers, nnU-Net's single-threaded augmentation (slow, but "
                            "it does not run out of memory for workers); give the job more memory to train faster")
    want[WORKERS_VAR] = (da, default_workers, why)

    export, why = min(NNUNET_DEFAULT_EXPORT, cores), f"{cpu_source}"
    if memory_bytes is not None:
        room = (memory_bytes - estimates.main) // max(1, estimates.export)
        if room < export:
            export, why = max(1, room), f"{memory_source}; ~{estimates.export / 2**20:.0f} MiB an export process "\
                                        "(estimates)"
    want[EXPORT_VAR] = (export, NNUNET_DEFAULT_EXPORT, why)
    if cores < host_cpus:
        want[OMP_VAR] = (cores, host_cpus, cpu_source)

    env = {}
    for var, (value, own, reason) in want.items():
        if value == own:
            continue
        if var in user:
            notes.append(f"{var}={user[var]} is your setting; left as it is (fitted to this allocation it would be "
                         f"{value}: {reason})")
            continue
        env[var] = str(value)
        notes.append(f"{var}={value} instead of {own}, {DEFAULT_WORDS[var]} ({reason})")
    if not env and not notes:
        notes.append(f"nnU-Net's own process counts fit this allocation ({cpu_source}; memory: {memory_source})")
    return Sizing(env, notes, warnings)

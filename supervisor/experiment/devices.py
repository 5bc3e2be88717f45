"""The experiment's devices and what one fold takes of them: GPUs from NVML (or the list given), their memory, and a
fold's estimated GPU memory; or CPU slots.

Capacity and need share one unit per pool: with `per_gpu: N` (or on the CPU) a device holds N folds of need 1;
with `per_gpu: auto` a GPU holds its memory in bytes and a fold needs its estimated peak times the margin, until a
fold of that configuration was measured (PeakWatch).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from supervisor.errors import ConfigError
from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.schedule import Device
from supervisor.gpu.nvml import Nvml, NvmlError, RealNvml, resolve_gpus

log = logging.getLogger("nnunet_supervise")

GIB = 2**30
# nnU-Net's planners size patch and batch for a GPU-memory target; the plans do not record it, their name does.
PLANNER_TARGET_GB = {"nnUNetResEncUNetMPlans": 8, "nnUNetResEncUNetLPlans": 24, "nnUNetResEncUNetXLPlans": 40}
DEFAULT_TARGET_GB = 8  # ExperimentPlanner's gpu_memory_target_in_gb
OVERHEAD_GB = 1.5  # the CUDA context, cuDNN workspaces, allocator slack beyond the planner's estimate


def estimated_need(plans_name: str, margin: float) -> float:
    """Bytes one fold may take on a GPU: the planner's target (from the plans' name), overhead, margin."""
    target = next((gb for name, gb in PLANNER_TARGET_GB.items() if plans_name.startswith(name)), DEFAULT_TARGET_GB)
    return (target + OVERHEAD_GB) * margin * GIB


class Pool(NamedTuple):
    devices: list[Device]
    needs: dict[str, float]  # configuration -> what one of its folds takes of a device's capacity
    line: str  # for the log
    by_memory: bool = False  # capacities and needs in bytes of GPU memory (per_gpu: auto, every GPU's total known)


def pool(exp: ExperimentContext, nvml_factory: Callable[[], Nvml] = RealNvml) -> Pool:
    """The devices and what a fold takes of them; ConfigError where the file asks for what is not there."""
    spec = exp.spec
    devices_cfg = spec.experiment.devices
    if spec.nnunet.device != "cuda":
        devices = [Device(spec.nnunet.device, float(devices_cfg.slots))]
        return Pool(devices, {c: 1.0 for c in exp.configurations},
                    f"{spec.nnunet.device}: {devices_cfg.slots} fold(s) at once (experiment.devices.slots)")
    wanted = None if devices_cfg.gpus == "auto" else [str(g) for g in devices_cfg.gpus]
    found, totals, notes = _gpus(nvml_factory, wanted)
    if not found:
        if wanted is None:
            raise ConfigError([f"experiment.devices.gpus: auto found no GPU through NVML ({'; '.join(notes)}); list "
                               "them, or train with nnunet.device: cpu"])
        found, totals = wanted, {}  # listed but not seen (no NVML here): trust the list, pack by count
    per_gpu = devices_cfg.per_gpu
    if per_gpu != "auto" or not totals:
        count = 1 if per_gpu == "auto" else int(per_gpu)
        return Pool([Device(g, float(count)) for g in found], {c: 1.0 for c in exp.configurations},
                    f"GPUs {', '.join(found)}: {count} fold(s) each")
    need = estimated_need(spec.nnunet.plans, devices_cfg.memory_margin) * spec.nnunet.num_gpus
    # a GPU smaller than the estimate (an 11 GB card: 8 GB target + overhead, x 1.25 is 11.9 GiB) still takes one
    # fold: capped at the largest, or no fold would ever start
    largest = float(max(totals[g] for g in found))
    need = min(need, largest) if largest > 0 else need
    devices = [Device(g, float(totals[g])) for g in found]
    per = ", ".join(f"{g}: {int(totals[g] // need)}" for g in found)
    return Pool(devices, {c: need for c in exp.configurations},
                f"GPUs packed by memory (a fold estimated at {need / GIB:.1f} GiB until measured): {per} fold(s)",
                by_memory=True)


def _gpus(nvml_factory: Callable[[], Nvml], wanted: list[str] | None) -> tuple[list[str], dict[str, int], list[str]]:
    try:
        nvml = nvml_factory()
        nvml.init()
    except Exception as exc:  # no driver, no library: the caller decides whether that is fatal
        return [], {}, [f"NVML unavailable: {exc}"]
    try:
        gpus, notes = resolve_gpus(nvml, wanted)
        totals: dict[str, int] = {}
        for g in gpus:
            with contextlib.suppress(NvmlError):
                totals[g.label] = nvml.memory_total(g.handle)
        if len(totals) != len(gpus):
            totals = {}  # one unknown: pack by count instead
        return [g.label for g in gpus], totals, notes
    finally:
        with contextlib.suppress(Exception):
            nvml.shutdown()


def peak_by_pid(nvml: Any, gpus: list[str]) -> dict[int, int]:
    """GPU memory per process on these GPUs now (NVML's compute processes): for measuring a fold's peak."""
    out: dict[int, int] = {}
    devices, _ = resolve_gpus(nvml, gpus)
    for dev in devices:
        with contextlib.suppress(NvmlError):
            for pid, used in nvml.compute_processes(dev.handle):
                if used:
                    out[pid] = out.get(pid, 0) + used
    return out


MEASURE_EVERY_S = 30.0  # how often the experiment supervisor samples its folds' GPU memory
RISE = 1.05  # a later peak is news once it is this much above the need last sent


@dataclass
class PeakWatch:
    """What a fold of each configuration really takes on its GPU: NVML's memory of the fold's trainer tree, sampled
    while it trains, once the fold finished an epoch. A measured peak (times the margin) above the need the
    scheduler counts raises it, by more than RISE; it never lowers it below the planner's estimate: one sample can
    miss the peak (a relaunched trainer still starting, a final validation after nnU-Net emptied its cache), and a
    fold packed by a low sample is an OOM later. Capped at the largest GPU: a fold that ran alone fits alone, and a
    need no device can hold would leave the rest of its configuration waiting for ever."""

    nvml: Nvml
    gpus: list[str]
    margin: float
    needs: dict[str, float]  # configuration -> the need the scheduler counts now (the estimate to start with)
    largest: float  # the largest GPU's capacity (bytes)
    peaks: dict[str, int] = field(default_factory=dict)  # configuration -> highest bytes one fold tree held

    def sample(self, trees: Iterable[tuple[str, set[int]]]) -> list[tuple[str, float]]:
        """trees: (configuration, the pids of one fold's trainer tree) for the folds past their first epoch; returns
        the (configuration, need in bytes) that rose."""
        usage = peak_by_pid(self.nvml, self.gpus)
        for configuration, pids in trees:
            held = sum(usage.get(pid, 0) for pid in pids)
            if held:
                self.peaks[configuration] = max(self.peaks.get(configuration, 0), held)
        rose = []
        for configuration, peak in self.peaks.items():
            need = min(peak * self.margin, self.largest)
            counted = self.needs.get(configuration, 0.0)
            if need > counted * RISE:
                self.needs[configuration] = need
                rose.append((configuration, need))
        return rose


def peak_watch(exp: ExperimentContext, packing: Pool,
               nvml_factory: Callable[[], Nvml] = RealNvml) -> PeakWatch | None:
    """A watch where folds are packed by memory on one GPU each (DDP folds span several: not measured); None
    elsewhere, or where NVML cannot be opened."""
    if not packing.by_memory or exp.spec.nnunet.num_gpus != 1:
        return None
    try:
        nvml = nvml_factory()
        nvml.init()
    except Exception as exc:  # the pool read the GPUs a moment ago; if NVML is gone now, pack by the estimate
        log.warning("GPU memory of the folds will not be measured (NVML: %s); packing by the estimate", exc)
        return None
    return PeakWatch(nvml, [d.name for d in packing.devices], exp.spec.experiment.devices.memory_margin,
                     dict(packing.needs), max(d.capacity for d in packing.devices))

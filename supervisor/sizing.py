"""nnU-Net's process counts fitted to one run's allocation: its plans' estimates, this machine, the user's settings.

The launch sets what this returns (the `launch` event's `sized`) and `check` prints it; the rule is pure
(core/sizing.py), the reading of the machine is evidence/allocation.py.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor.context import RunContext
from supervisor.core.remedies import nnunet_default_workers, user_settings
from supervisor.core.sizing import SIZED_VARS, Estimates, Sizing, export_bytes, fit, worker_bytes
from supervisor.evidence.allocation import Allocation, read_allocation
from supervisor.fileread import read_bytes


def batch_bytes(config: Mapping[str, Any], channels: int) -> int:
    """One augmented training batch as the workers hand it over: float32 images plus the segmentation targets at
    every deep-supervision scale (about 1.15 x one int16 target)."""
    patch = math.prod(int(x) for x in config.get("patch_size", [1]))
    batch = int(config.get("batch_size", 2))
    return int(batch * patch * (4 * channels + 2 * 1.15))


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_bytes(path, 64 << 20, what))
    except (OSError, ValueError):
        return None


def estimates_for(ctx: RunContext) -> Estimates:
    """The plans' estimates for this configuration (the defaults where the plans cannot be read)."""
    pre = ctx.paths.preprocessed / ctx.dataset_name
    plans, dataset_json = _json(pre / f"{ctx.config.nnunet.plans}.json", "plans file"), \
        _json(pre / "dataset.json", "dataset.json")
    config = plans.get("configurations", {}).get(ctx.config.nnunet.configuration) \
        if isinstance(plans, dict) and isinstance(plans.get("configurations"), dict) else None
    if not isinstance(config, dict) or not isinstance(dataset_json, dict):
        return Estimates()
    try:
        channels = len(dataset_json.get("channel_names") or {0: 0})
        classes = len(dataset_json.get("labels") or {0: 0})
        voxels = math.prod(int(x) for x in config.get("median_image_size_in_voxels", [1]))
        return Estimates(worker=worker_bytes(batch_bytes(config, channels)), export=export_bytes(classes, voxels))
    except (TypeError, ValueError):
        return Estimates()


def sizing_for(ctx: RunContext, environ: Mapping[str, str] | None = None,
               allocation: Allocation | None = None) -> Sizing:
    """What to set before this run's launches, with the reasons."""
    env = os.environ if environ is None else environ
    a = allocation or read_allocation(env)
    values, _ = user_settings(ctx.config.nnunet.env, env)
    user = dict(values)
    for var in SIZED_VARS:  # OMP_NUM_THREADS is not a remedy variable, but the user's setting of it stands too
        if var not in user and var in ctx.config.nnunet.env:
            user[var] = ctx.config.nnunet.env[var]
        elif var not in user and var in env:
            user[var] = env[var]
    return fit(host_cpus=a.host_cpus, cpus=a.cpus, cpu_source=a.cpu_source, memory_bytes=a.memory_bytes,
               memory_source=a.memory_source,
               default_workers=nnunet_default_workers(socket.gethostname(), a.host_cpus),
               estimates=estimates_for(ctx), user=user)

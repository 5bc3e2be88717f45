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
from supervisor.core.sizing import (
    SIZED_VARS,
    Estimates,
    Sizing,
    batch_bytes,
    export_bytes,
    fit,
    worker_bytes,
)
from supervisor.evidence.allocation import Allocation, read_allocation
from supervisor.fileread import read_bytes

__all__ = ["Estimates", "Sizing", "batch_bytes", "estimates_for", "sizing_for", "user_sized"]

_JSON_LIMIT = 64 << 20  # as plans_batch_size reads the plans


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_bytes(path, _JSON_LIMIT, what))
    except (OSError, ValueError):  # an unreadable plans file is preflight's to report; here: the default estimates
        return None


def _voxels(shape: Any) -> int | None:
    if not isinstance(shape, list) or not shape:
        return None
    try:
        return max(1, math.prod(int(x) for x in shape))
    except (TypeError, ValueError):
        return None


def segmentation_heads(labels: Any) -> int:
    """The channels of nnU-Net's logits: one per label, or with regions (a label's value a list) one per region
    (the background is none), as nnU-Net's LabelManager.num_segmentation_heads."""
    if not isinstance(labels, dict) or not labels:
        return 2
    regions = any(isinstance(v, (list, tuple)) for v in labels.values())
    return max(1, len(labels) - 1) if regions else len(labels)


def estimates_from(plans: Any, dataset_json: Any, configuration: str) -> Estimates:
    """The estimates of one configuration of these plans (the defaults for what cannot be read)."""
    configs = plans.get("configurations") if isinstance(plans, dict) else None
    config = configs.get(configuration) if isinstance(configs, dict) else None
    if not isinstance(config, dict) or not isinstance(dataset_json, dict):
        return Estimates()
    try:
        channels = len(dataset_json.get("channel_names") or {0: 0})
        worker = worker_bytes(batch_bytes(config, channels))
    except (TypeError, ValueError, AttributeError):
        return Estimates()
    pre = _voxels(config.get("median_image_size_in_voxels"))
    # the export resamples to the original spacing: the plans' median shape there (3d_lowres: several times the
    # preprocessed one)
    original = _voxels(plans.get("original_median_shape_after_transp")) or pre or 1
    export = export_bytes(segmentation_heads(dataset_json.get("labels")), original, pre or 0)
    return Estimates(worker=worker, export=export, from_plans=True)


def estimates_for(ctx: RunContext) -> Estimates:
    """The plans' estimates for this run's configuration (the defaults where the plans cannot be read)."""
    pre = ctx.paths.preprocessed / ctx.dataset_name
    plans = _json(pre / f"{ctx.config.nnunet.plans}.json", "plans file")
    dataset_json = _json(pre / "dataset.json", "dataset.json")
    return estimates_from(plans, dataset_json, ctx.config.nnunet.configuration)


def user_sized(config_env: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of the sizing the user set: nnunet.env over the supervisor's environment, as in the trainer's
    environment (the remedy variables by core.remedies.user_settings; OMP_NUM_THREADS, not a remedy's, alike)."""
    values, _ = user_settings(config_env, environ)
    user = {var: values[var] for var in SIZED_VARS if var in values}
    for var in SIZED_VARS:
        if var not in user and var in config_env:
            user[var] = config_env[var]
        elif var not in user and var in environ:
            user[var] = environ[var]
    return user


def sizing_for(ctx: RunContext, environ: Mapping[str, str] | None = None,
               allocation: Allocation | None = None) -> Sizing:
    """What to set before this run's launches, with the reasons. `environ`: the supervisor's environment (default
    os.environ: SLURM's variables and the user's settings); `allocation`: read from this machine unless given."""
    env = os.environ if environ is None else environ
    a = read_allocation(env) if allocation is None else allocation
    nn = ctx.config.nnunet
    return fit(host_cpus=a.host_cpus, cpus=a.cpus, cpu_source=a.cpu_source, memory_bytes=a.memory_bytes,
               memory_source=a.memory_source,
               # nnU-Net looks its host up in its table and caps the count at os.cpu_count(): the host's CPUs
               default_workers=nnunet_default_workers(socket.gethostname(), a.host_cpus),
               estimates=estimates_for(ctx), user=user_sized(nn.env, env),
               ranks=nn.num_gpus if nn.device == "cuda" else 1, device=nn.device)

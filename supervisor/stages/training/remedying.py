"""The remedy ladder of one run, from its config and this machine: the options, what the user set, and the values
nnU-Net would use here on its own (its worker count, the plans' batch size)."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping

from supervisor.context import RunContext
from supervisor.core.remedies import (
    EXPORT_VAR,
    NNUNET_DEFAULT_EXPORT,
    WORKERS_VAR,
    Ladder,
    RemedyOptions,
    Setting,
    nnunet_default_workers,
    user_settings,
)
from supervisor.fileread import read_bytes
from supervisor.sizing import sizing_for

log = logging.getLogger("nnunet_supervise")


def _as_count(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def plans_batch_size(ctx: RunContext) -> int | None:
    path = ctx.paths.preprocessed / ctx.dataset_name / f"{ctx.config.nnunet.plans}.json"
    try:
        plans = json.loads(read_bytes(path, 64 << 20, "plans file"))
        value = plans["configurations"][ctx.config.nnunet.configuration]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def fitted_env(ctx: RunContext) -> dict[str, str]:
    """The variables set before every launch to fit nnU-Net's process counts to this allocation (remedies.
    fit_allocation; never one the user set), said once in the log."""
    if not ctx.config.remedies.fit_allocation:
        return {}
    sizing = sizing_for(ctx)
    for line in sizing.notes:
        log.info("sizing: %s", line)
    for line in sizing.warnings:
        log.warning("sizing: %s", line)
    return dict(sizing.env)


def ladder_for(ctx: RunContext, environ: Mapping[str, str] | None = None,
               sized: Mapping[str, str] | None = None) -> Ladder | None:
    """The run's ladder; None with remedies.enabled: false (every relaunch as it was). `sized`: the counts fitted
    to the allocation, from which a halving starts."""
    r = ctx.config.remedies
    if not r.enabled:
        return None
    values, sources = user_settings(ctx.config.nnunet.env, os.environ if environ is None else environ)
    options = RemedyOptions(enabled=True, workers=r.workers, min_workers=r.min_workers, compile=r.compile,
                            cuda_alloc=r.cuda_alloc, batch_size=r.batch_size, min_batch_size=r.min_batch_size,
                            override_user=r.override_user, weights_only=r.weights_only)
    sized = sized or {}
    workers = _as_count(sized.get(WORKERS_VAR))
    export = _as_count(sized.get(EXPORT_VAR))
    setting = Setting(nnunet_default_workers(socket.gethostname(), os.cpu_count() or 1) if workers is None else workers,
                      values, sources, cooperative=ctx.config.cooperative.enabled, batch_size=plans_batch_size(ctx),
                      default_export=NNUNET_DEFAULT_EXPORT if export is None else export)
    return Ladder(options, setting)

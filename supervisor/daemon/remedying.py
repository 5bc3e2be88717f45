"""The remedy ladder of one run, from its config and this machine: the options, what the user set, and the values
nnU-Net would use here on its own (its worker count, the plans' batch size)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping

from supervisor.context import RunContext
from supervisor.core.remedies import Ladder, RemedyOptions, Setting, nnunet_default_workers, user_settings
from supervisor.fileread import read_bytes


def plans_batch_size(ctx: RunContext) -> int | None:
    path = ctx.paths.preprocessed / ctx.dataset_name / f"{ctx.config.nnunet.plans}.json"
    try:
        plans = json.loads(read_bytes(path, 64 << 20, "plans file"))
        value = plans["configurations"][ctx.config.nnunet.configuration]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def ladder_for(ctx: RunContext, environ: Mapping[str, str] | None = None) -> Ladder | None:
    """The run's ladder; None with remedies.enabled: false (every relaunch as it was)."""
    r = ctx.config.remedies
    if not r.enabled:
        return None
    values, sources = user_settings(ctx.config.nnunet.env, os.environ if environ is None else environ)
    options = RemedyOptions(enabled=True, workers=r.workers, min_workers=r.min_workers, compile=r.compile,
                            cuda_alloc=r.cuda_alloc, batch_size=r.batch_size, min_batch_size=r.min_batch_size,
                            override_user=r.override_user)
    setting = Setting(nnunet_default_workers(socket.gethostname(), os.cpu_count() or 1), values, sources,
                      cooperative=ctx.config.cooperative.enabled, batch_size=plans_batch_size(ctx))
    return Ladder(options, setting)

"""The remedy ladder of one run, from its config and this machine: the options, what the user set, and the values
nnU-Net would use here on its own (its worker count, the plans' batch size)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping

from supervisor.context import RunContext
from supervisor.core.remedies import ALLOC_VAR, COMPILE_VAR, WORKERS_VAR, Ladder, RemedyOptions, Setting
from supervisor.fileread import read_bytes
from supervisor.trainer.protocol import BATCH_SIZE_VAR

REMEDY_VARS = (WORKERS_VAR, COMPILE_VAR, ALLOC_VAR, BATCH_SIZE_VAR)


def nnunet_default_workers(hostname: str, cpu_count: int) -> int:
    """nnU-Net's own worker count without nnUNet_n_proc_DA (nnunetv2/utilities/default_n_proc_DA.py, 2.8: a table of
    the DKFZ's hosts, 12 elsewhere, never more than the CPU count). Copied rather than imported: the daemon does not
    load nnU-Net (nor torch with it)."""
    table = (("Fabian", 12), ("isensee-", 12))
    prefixes = (("e230-dgx1", 10), ("hdf18-gpu", 16), ("e132-comp", 16), ("e230-dgx2", 6), ("e230-dgxa100-", 28),
                ("e230-thinka100-", 20), ("lsf22-gpu", 28), ("hdf19-gpu", 12), ("e071-gpu", 12))
    exact = {"hdf19-gpu16": 16, "hdf19-gpu17": 16, "hdf19-gpu18": 16, "hdf19-gpu19": 16, "e230-AMDworkstation": 16}
    use = dict(table).get(hostname) or exact.get(hostname)
    if use is None:
        use = next((n for prefix, n in prefixes if hostname.startswith(prefix)), None)
    if use is None:
        lower = hostname.lower()
        use = 48 if "superh200" in lower else 28 if "superl40s" in lower else 12
    return min(use, cpu_count)


def user_settings(config_env: Mapping[str, str], environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The remedy variables the user set, and where: nnunet.env wins over the supervisor's environment (as in the
    trainer's environment)."""
    values, sources = {}, {}
    for var in REMEDY_VARS:
        if var in config_env:
            values[var], sources[var] = config_env[var], "nnunet.env"
        elif var in environ:
            values[var], sources[var] = environ[var], "the supervisor's environment"
    return values, sources


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

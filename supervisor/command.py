"""The nnUNetv2_train command line and environment for one attempt, built as data (never a shell string)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from supervisor.context import RunContext
from supervisor.errors import LaunchError
from supervisor.trainer.protocol import (
    ATTEMPT_VAR,
    HEARTBEAT_VAR,
    MARKER_VAR,
    SAVE_EVERY_EPOCHS_VAR,
    SAVE_EVERY_S_VAR,
    SAVE_ON_STOP_VAR,
    SNAPSHOT_EVERY_S_VAR,
)


def nnunet_tool(name: str) -> str:
    """One of nnU-Net's commands (nnUNetv2_train, nnUNetv2_predict, ...) from the supervisor's own environment first
    (the venv it was installed into), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"{name} not found beside this Python or on PATH; `pip install nnunetv2`")
    return found


def train_executable() -> str:
    """nnUNetv2_train from the supervisor's own environment first, then PATH."""
    return nnunet_tool("nnUNetv2_train")


def trainer_command(ctx: RunContext) -> list[str]:
    """What runs the training: nnUNetv2_train, or in cooperative mode nnU-Net's same entry through our shim
    (in this Python, whose environment has both nnunetv2 and this package)."""
    if ctx.config.cooperative.enabled:
        return [sys.executable, "-m", "supervisor.trainer.launch"]
    return [train_executable()]


def build_argv(ctx: RunContext, command: list[str], resume: bool, pretrained: str | None = None,
               validate: bool = False) -> list[str]:
    """COMMAND DATASET CONFIG FOLD -tr T -p P -device D [-num_gpus N] [--val | --c | -pretrained_weights W] [extra].

    validate: the training finished (checkpoint_final.pth) and only its final validation is left: --val runs just
    that (with the run's --npz, among the extra arguments), where --c would re-initialise the training and rewrite
    checkpoint_final.pth."""
    nn = ctx.config.nnunet
    argv = [*command, str(nn.dataset), nn.configuration, str(nn.fold),
            "-tr", nn.trainer, "-p", nn.plans, "-device", nn.device]
    if nn.num_gpus != 1:
        argv += ["-num_gpus", str(nn.num_gpus)]
    if validate:
        argv.append("--val")
    elif resume:
        argv.append("--c")
    elif pretrained:
        argv += ["-pretrained_weights", pretrained]
    return argv + list(nn.extra_args)


def build_env(ctx: RunContext, attempt: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The trainer's environment: ours, plus the config's env, nnU-Net's folders and custom trainer paths, and
    torch.compile's caches (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) unless the user set them: one for all folds of
    the configuration, in <nnUNet_results>/<dataset>/<trainer>__<plans>__<configuration>/.compile-cache/."""
    env = dict(os.environ if base is None else base)
    env.update(ctx.config.nnunet.env)
    env["nnUNet_preprocessed"] = str(ctx.paths.preprocessed)
    env["nnUNet_results"] = str(ctx.paths.results)
    if ctx.paths.raw is not None:
        env["nnUNet_raw"] = str(ctx.paths.raw)
    ext = [str(p) for p in ctx.trainer_paths]
    if env.get("nnUNet_extTrainer"):
        ext.append(env["nnUNet_extTrainer"])
    if ext:
        env["nnUNet_extTrainer"] = os.pathsep.join(ext)
    env[ATTEMPT_VAR] = str(attempt)
    env[MARKER_VAR] = str(ctx.layout.fold_dir)
    env["PYTHONUNBUFFERED"] = "1"  # the attempt log shows the traceback even when the trainer is SIGKILLed
    # beside the configuration's folds, not in /tmp: a relaunch on another node or pod, a systemd restart with
    # PrivateTmp, the next fold compile warm. Never a folder the user chose (nnunet.env, the supervisor's environment).
    cache = ctx.layout.fold_dir.parent / ".compile-cache"
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if not env.get(var):
            env[var] = str(cache / sub)
    coop = ctx.config.cooperative
    if coop.enabled:
        env[SAVE_EVERY_EPOCHS_VAR] = str(coop.save_every_epochs or 0)
        env[SAVE_EVERY_S_VAR] = "" if coop.save_every_s is None else repr(coop.save_every_s)
        env[HEARTBEAT_VAR] = str(ctx.layout.heartbeat_file)
        env[SNAPSHOT_EVERY_S_VAR] = "" if coop.snapshot_every_s is None else repr(coop.snapshot_every_s)
        env[SAVE_ON_STOP_VAR] = coop.save_on_stop
    return env


def helper_env(ctx: RunContext) -> dict[str, str]:
    """The environment of our short-lived helpers (checkpoint probe, trainer lookup): the trainer's (nnU-Net's
    folders, the custom trainers), but without the run marker and attempt: a helper is not part of the trainer's
    tree, which is found by that marker and stopped as a whole."""
    env = build_env(ctx, attempt=0)
    env.pop(MARKER_VAR, None)
    env.pop(ATTEMPT_VAR, None)
    return env

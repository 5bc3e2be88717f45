"""A systemd unit for one run.yaml, rendered by a pure function (`nnunet-supervise systemd CONFIG`).

Type=notify with a watchdog on the supervisor's main loop; SIGTERM to the supervisor only (KillMode=mixed), which
stops the trainer itself (after a cooperative save); restarts when the supervisor itself failed, not when it
finished (0), gave up (1), was misconfigured (2) or found the run locked (3); hardened as far as a GPU training
allows (nothing of the file system writable but the nnU-Net folders it must write).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.context import RunContext
from supervisor.core.rules import stop_deadline_s
from supervisor.errors import ExitCode
from supervisor.oomscore import CHILD_VAR

WATCHDOG_S = 60  # the main loop pings at least every 2 s; nothing on it blocks (verification, GPU-memory waits,
# stack dumps and tree stops run off it): bench/goodput.py measured its longest gap at about 2 s under faults


@dataclass(frozen=True)
class UnitSpec:
    """Everything the unit depends on, gathered from the run (see spec_for)."""

    name: str
    python: str
    config: Path
    working_dir: Path
    environment: dict[str, str]
    writable: list[Path]
    stop_timeout_s: int
    cuda: bool
    user: str | None = None  # system units: run as this user (None: as root, said in a comment)
    user_unit: bool = False
    description: str = ""
    readable: list[Path] = field(default_factory=list)


def _quote(value: str) -> str:
    """systemd's own quoting for Environment= / ExecStart= words (double quotes, backslash escapes)."""
    if value and all(c.isalnum() or c in "/._-:=,+@%" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(spec: UnitSpec) -> str:
    env_lines = [f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(spec.environment.items())]
    exec_start = " ".join(_quote(w) for w in [spec.python, "-m", "supervisor", "run", str(spec.config)])
    devices = ([
        "# CUDA: only the NVIDIA character devices (and the standard pseudo devices)",
        "DevicePolicy=closed",
        "DeviceAllow=char-nvidia-frontend rw",
        "DeviceAllow=char-nvidia-uvm rw",
        "DeviceAllow=char-nvidia-caps rw",
        "DeviceAllow=char-nvidiactl rw",
    ] if spec.cuda else ["PrivateDevices=yes"])
    user = ([] if spec.user_unit else
            [f"User={spec.user}"] if spec.user else ["# runs as root: add User= to train as someone else"])
    lines = [
        "# Rendered by `nnunet-supervise systemd` for one run; re-render after moving the run or the venv.",
        "[Unit]",
        f"Description={spec.description or f'nnU-Net training supervised by nnunet-supervise ({spec.name})'}",
        "Wants=network-online.target",
        "After=network-online.target local-fs.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={_quote(str(spec.working_dir))}",
        *user,
        *env_lines,
        "Environment=PYTHONUNBUFFERED=1",
        # matplotlib wants a writable home; give it the unit's cache directory instead (inductor's and triton's
        # caches go to the results folder, shared by the folds and kept across a PrivateTmp restart: command.py)
        "Environment=MPLCONFIGDIR=%C/nnunet-supervise/matplotlib",
        "CacheDirectory=nnunet-supervise",
        f"WatchdogSec={WATCHDOG_S}",
        "# an OOM kill in the trainer's tree is the supervisor's to answer (evidence, a remedy, a relaunch); systemd's",
        "# default (OOMPolicy=stop) would stop the whole unit, the supervisor with it",
        "OOMPolicy=continue",
        "# the kernel's OOM killer picks the trainer, not the supervisor: the unit starts at -500 (the supervisor has",
        "# no capability to lower itself) and the supervisor sets what it starts back to 0 (raising needs none)",
        "OOMScoreAdjust=-500",
        f"Environment={CHILD_VAR}=0",
        "# SIGTERM to the supervisor alone: it stops the trainer's tree itself, after a save in cooperative mode",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={spec.stop_timeout_s}",
        f"# {ExitCode.STOPPED}: stopped on request, resumable. Restart only when the supervisor itself failed (a crash "
        "exits 70, a watchdog timeout aborts it),",
        f"# not when it finished, gave up ({ExitCode.GAVE_UP}), was misconfigured ({ExitCode.USAGE}) or the run was "
        f"locked ({ExitCode.LOCKED}).",
        f"SuccessExitStatus={ExitCode.STOPPED}",
        "Restart=on-failure",
        f"RestartPreventExitStatus={ExitCode.GAVE_UP} {ExitCode.USAGE} {ExitCode.LOCKED}",
        "RestartSec=30",
        "# hardening (what a training on CPU or CUDA can live with)",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        f"ReadWritePaths={' '.join(_quote(str(p)) for p in spec.writable)}",
        "PrivateTmp=yes",
        *devices,
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "# nnU-Net needs no network; DDP and NCCL talk over localhost",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "ProtectProc=invisible",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "UMask=0027",
        "",
        "[Install]",
        f"WantedBy={'default.target' if spec.user_unit else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def unit_name(config: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in config.stem)
    return f"nnunet-supervise-{stem}.service"


def spec_for(ctx: RunContext, python: str, user: str | None, user_unit: bool) -> UnitSpec:
    """Gather the run's paths and needs (reads nothing but the loaded config)."""
    cfg = ctx.config
    env = {"nnUNet_preprocessed": str(ctx.paths.preprocessed), "nnUNet_results": str(ctx.paths.results)}
    if ctx.paths.raw is not None:
        env["nnUNet_raw"] = str(ctx.paths.raw)
    # nnU-Net writes the results and unpacks the preprocessed data in place (.npz -> .npy)
    writable = [ctx.paths.results, ctx.paths.preprocessed]
    coop = cfg.cooperative
    stop_s = stop_deadline_s(cfg.process.stop_grace_s, coop.enabled, coop.save_on_stop, coop.stop_timeout_s)
    nn = cfg.nnunet
    return UnitSpec(
        name=ctx.config_path.stem, python=python, config=ctx.config_path, working_dir=ctx.config_path.parent,
        environment=env, writable=writable, stop_timeout_s=stop_s, cuda=nn.device == "cuda", user=user,
        user_unit=user_unit,
        description=f"nnU-Net {nn.dataset} {nn.configuration} fold {nn.fold} ({nn.trainer}), nnunet-supervise "
                    f"{ctx.config_path}")


def enable_hint(name: str, user_unit: bool) -> str:
    scope = "--user " if user_unit else ""
    return f"systemctl {scope}daemon-reload && systemctl {scope}enable --now {shlex.quote(name)}"

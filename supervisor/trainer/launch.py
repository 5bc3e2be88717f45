"""`python -m supervisor.trainer.launch <nnUNetv2_train arguments>`: nnU-Net's own training entry, cooperative.

The trainer class is resolved by nnU-Net itself (`get_trainer_from_args`: the nnunetv2 package, then
`nnUNet_extTrainer`); we only wrap the instance it returns (see supervisor.trainer.cooperative). Single-process
training only (the config refuses cooperative mode with num_gpus > 1). Runs in the trainer's process, never in
the daemon.

The start-up is timed from here (cooperative.Startup): the process's start (/proc, else this module's first line),
nnU-Net's imports done when it calls get_trainer_from_args, the trainer built when that returns.
"""

from __future__ import annotations

import time

FIRST_LINE = time.time()  # before nnU-Net's imports (torch): the start-up's origin where /proc says nothing

import sys  # noqa: E402
from typing import Any  # noqa: E402


def origin(first_line: float, proc: float | None) -> float:
    """The process's start by /proc when it is plausible (at most a minute before this module's first line: a
    container whose /proc/uptime is not the host's makes it nonsense), else the first line."""
    return proc if proc is not None and first_line - 60.0 <= proc <= first_line else first_line


def _patch(first_line: float = FIRST_LINE) -> None:
    import nnunetv2.run.run_training as rt

    from supervisor.trainer.cooperative import Startup, install, own_start

    if getattr(rt.get_trainer_from_args, "_nnunet_supervise", False):
        return
    original = rt.get_trainer_from_args
    startup = Startup(origin(first_line, own_start(time.time())))

    def get_trainer_from_args(*args: Any, **kwargs: Any) -> Any:
        startup.imports_done = time.time()
        trainer = original(*args, **kwargs)
        startup.built = time.time()
        install(trainer, startup=startup)
        return trainer

    get_trainer_from_args._nnunet_supervise = True  # type: ignore[attr-defined]
    rt.get_trainer_from_args = get_trainer_from_args


def main(argv: list[str] | None = None) -> None:
    _patch()
    from nnunetv2.run.run_training import run_training_entry

    sys.argv = ["nnUNetv2_train", *(sys.argv[1:] if argv is None else argv)]
    run_training_entry()

if __name__ == "__main__":
    main()

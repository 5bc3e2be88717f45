"""`python -m supervisor.trainer.launch <nnUNetv2_train arguments>`: nnU-Net's own training entry, cooperative.

The trainer class is resolved by nnU-Net itself (`get_trainer_from_args`: the nnunetv2 package, then
`nnUNet_extTrainer`); we only wrap the instance it returns (see supervisor.trainer.cooperative). Single-process
training only (the config refuses cooperative mode with num_gpus > 1). Runs in the trainer's process, never in
the daemon.
"""

from __future__ import annotations

import sys
from typing import Any


def _patch() -> None:
    import nnunetv2.run.run_training as rt

    from supervisor.trainer.cooperative import install

    if getattr(rt.get_trainer_from_args, "_nnunet_supervise", False):
        return
    original = rt.get_trainer_from_args

    def get_trainer_from_args(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        install(trainer)
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

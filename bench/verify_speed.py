"""Checkpoint verification speed on a realistically sized nnU-Net checkpoint, side by side with plain reads.

    .venv/bin/python bench/verify_speed.py [WORKDIR]

Builds nnU-Net's default 3d_fullres network (6 stages, 32..320 features, 128^3 patch, deep supervision) through
the real nnUNetTrainer.initialize() from a plans file, gives every parameter an SGD momentum buffer, and saves
the dict nnUNetTrainer.save_checkpoint writes (a few hundred MB). Then, all with a warm page cache:

- structure: supervisor.checkpoint.verify_structure (zip directory + every CRC, no torch) vs `cat f >/dev/null`;
  target: verify reaches >= 0.8x the speed of reading the file;
- content + compatibility: the daemon's probe subprocess (torch.load(weights_only=True) with the allowlist,
  required keys, finiteness, then the trainer's own network built and compared key by key) vs a subprocess
  that does nothing but import torch and torch.load(weights_only=False) the same file.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPEAT = 5
DATASET = "Dataset990_Bench"
TARGET = 0.8


def realistic_plans(tiny_plans: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net's default plans shape, with the architecture it picks for a typical 3d_fullres CT task."""
    plans = json.loads(json.dumps(tiny_plans))
    plans["dataset_name"] = DATASET
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = [128, 128, 128]
    n = 6
    cfg["architecture"]["arch_kwargs"].update({
        "n_stages": n,
        "features_per_stage": [32, 64, 128, 256, 320, 320],
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
    })
    return plans


def write_inputs(work: Path) -> tuple[Path, Path]:
    """A plans file + dataset.json under a scratch nnUNet_preprocessed (all the trainer needs to initialize)."""
    base = work / "nnUNet_preprocessed" / DATASET
    base.mkdir(parents=True, exist_ok=True)
    # The plans nnU-Net wrote for the tests' tiny dataset, as a template (realistic_plans() scales it up).
    tiny = json.loads(Path(__file__).with_name("plans_template.json").read_text())
    (base / "nnUNetPlans.json").write_text(json.dumps(realistic_plans(tiny)))
    (base / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
        "numTraining": 100, "file_ending": ".nii.gz"}))
    # initialize() infers the dataset format from the file endings in the preprocessed data folder.
    (base / "nnUNetPlans_3d_fullres").mkdir(exist_ok=True)
    (base / "nnUNetPlans_3d_fullres" / "case_000.b2nd").touch()
    return base / "nnUNetPlans.json", base / "dataset.json"


def nnunet_env(work: Path) -> dict[str, str]:
    return {"nnUNet_preprocessed": str(work / "nnUNet_preprocessed"), "nnUNet_results": str(work / "results"),
            "nnUNet_raw": str(work / "raw")}


def make_checkpoint(work: Path, plans_file: Path, dataset_json: Path) -> Path:
    path = work / "checkpoint_latest.pth"
    if path.exists():
        return path
    os.environ.update(nnunet_env(work))  # before importing nnunetv2, which reads them at import
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = {**json.loads(plans_file.read_text()), "continue_training": False}
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, json.loads(dataset_json.read_text()), torch.device("cpu"))
    trainer.initialize()
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            trainer.optimizer.state[p]["momentum_buffer"] = torch.randn_like(p)
    ema = [np.float64(0.1 * i) for i in range(1, 51)]
    torch.save({
        "network_weights": trainer.network.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": ema, "ema_fg_dice": ema, "dice_per_class_or_region": [[x, x] for x in ema],
                    "train_losses": [np.float32(-0.5)] * 50, "val_losses": [np.float32(-0.4)] * 50,
                    "lrs": [0.01] * 50, "epoch_start_timestamps": [0.0] * 50, "epoch_end_timestamps": [1.0] * 50},
        "_best_ema": np.float64(0.7),
        "current_epoch": 50,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }, path)
    return path


def timed(fn: Any, repeat: int = REPEAT) -> float:
    fn()  # warm the page cache and the code paths
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "nnunet-supervise-bench-verify"
    work.mkdir(parents=True, exist_ok=True)
    plans_file, dataset_json = write_inputs(work)
    ckpt = make_checkpoint(work, plans_file, dataset_json)
    size_mb = ckpt.stat().st_size / 1e6

    from supervisor.checkpoints.structure import verify_structure
    from supervisor.checkpoints.verify import probe

    report = verify_structure(ckpt)
    assert report.ok, report.problems
    t_cat = timed(lambda: subprocess.run(["cat", str(ckpt)], stdout=subprocess.DEVNULL, check=True))
    t_struct = timed(lambda: verify_structure(ckpt))

    env = {**os.environ, **nnunet_env(work)}
    expect = {"trainer_name": "nnUNetTrainer", "configuration": "3d_fullres", "fold": 0}
    network = {"trainer": "nnUNetTrainer", "plans_file": str(plans_file), "dataset_json": str(dataset_json),
               "configuration": "3d_fullres", "fold": 0}
    answers: list[dict[str, Any]] = []
    t_probe = timed(lambda: answers.append(probe([str(ckpt)], expect, network, env)), repeat=3)
    result = answers[-1]["results"][0]
    t_content = timed(lambda: probe([str(ckpt)], expect, None, env), repeat=3)
    assert result["compatible"] is True and not result["content_problems"], result
    plain = [sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], map_location='cpu', weights_only=False)",
             str(ckpt)]
    t_plain = timed(lambda: subprocess.run(plain, check=True), repeat=3)

    speed = t_cat / t_struct
    print(f"checkpoint: {size_mb:.0f} MB, nnU-Net default 3d_fullres PlainConvUNet + SGD momentum, {ckpt}")
    print(f"structure verify   {t_struct * 1e3:8.1f} ms   ({size_mb / 1e3 / t_struct:.2f} GB/s)")
    print(f"cat f >/dev/null   {t_cat * 1e3:8.1f} ms   ({size_mb / 1e3 / t_cat:.2f} GB/s)")
    print(f"  structure verify speed / read speed = {speed:.2f}x   (target >= {TARGET}x: "
          f"{'met' if speed >= TARGET else 'NOT met'})")
    print(f"content + compatibility probe (subprocess)  {t_probe:6.2f} s   "
          f"(network build {answers[-1]['network_build_s']:.2f} s, load + checks + compare {result['seconds']:.2f} s)")
    print(f"content probe alone (no network build)      {t_content:6.2f} s")
    print(f"plain torch.load subprocess (no checks)     {t_plain:6.2f} s")
    print(f"  content / plain torch.load = {t_content / t_plain:.2f}x;  content + compatibility / plain torch.load = "
          f"{t_probe / t_plain:.2f}x (on a relaunch it runs during the backoff delay)")


if __name__ == "__main__":
    main()

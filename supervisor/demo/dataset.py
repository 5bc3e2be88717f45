"""Generate a tiny synthetic nnU-Net v2 dataset (noise with a bright sphere) and preprocess it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_Tiny"
SHAPE = (24, 32, 32)


def write_raw_dataset(raw_root: Path, num_cases: int = 10, seed: int = 0) -> Path:
    """Write `num_cases` NIfTI image/label pairs plus dataset.json under raw_root; return the folder."""
    import nibabel as nib  # heavy but torch-free; only the demo and tests need it
    import numpy as np

    folder = raw_root / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    for i in range(num_cases):
        centre = [rng.uniform(s * 0.3, s * 0.7) for s in SHAPE]
        radius = rng.uniform(4, 7)
        sphere = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2
        image = rng.normal(0, 1, SHAPE).astype(np.float32) + 3.0 * sphere
        affine = np.eye(4)
        case = f"tiny_{i:03d}"
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(sphere.astype(np.uint8), affine), folder / "labelsTr" / f"{case}.nii.gz")
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "sphere": 1},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def nnunet_env(raw: Path, preprocessed: Path, results: Path) -> dict[str, str]:
    """The environment nnU-Net's command-line tools need for these three folders."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(preprocessed),
        nnUNet_results=str(results),
        nnUNet_n_proc_DA="1",
        nnUNet_def_n_proc="1",
    )
    return env


CONFIGURATIONS = ("3d_fullres", "2d")  # two, so that an experiment has something to choose between


def preprocess(raw: Path, preprocessed: Path, results: Path) -> None:
    """Run nnU-Net's own planning and preprocessing for the 3d_fullres and 2d configurations."""
    tool = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    argv = [str(tool), "-d", str(DATASET_ID), "-c", *CONFIGURATIONS, "-np", "1", "--verify_dataset_integrity"]
    subprocess.run(argv, env=nnunet_env(raw, preprocessed, results), check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def make_dataset(root: Path) -> tuple[Path, Path, Path]:
    """Create raw, preprocessed and results folders under root with the tiny dataset ready to train."""
    raw, pre, res = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    for p in (raw, pre, res):
        p.mkdir(parents=True, exist_ok=True)
    if not (pre / DATASET_NAME / "nnUNetPlans.json").exists():
        write_raw_dataset(raw)
        preprocess(raw, pre, res)
    elif not (pre / DATASET_NAME / "nnUNetPlans_2d").is_dir():  # a cache made before 2d was preprocessed
        tool = Path(sys.executable).parent / "nnUNetv2_preprocess"
        subprocess.run([str(tool), "-d", str(DATASET_ID), "-c", "2d", "-np", "1"], env=nnunet_env(raw, pre, res),
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return raw, pre, res

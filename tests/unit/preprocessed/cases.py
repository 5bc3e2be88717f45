"""Preprocessed cases as nnU-Net 2.8 writes them, for the preprocessed-data tests: the arrays go through nnU-Net's own
nnUNetDatasetBlosc2.save_case with the chunks and blocks run_case_save computes (comp_blosc2_params)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

IDENT = "nnUNetPlans_3d_fullres"
REAL = Path("/tmp/tinyds/nnUNet_preprocessed/Dataset901_Tiny")  # made by another test run; only used when there


def plans(spacing: tuple[float, ...] = (1.0, 1.0, 1.0), patch: tuple[int, ...] = (16, 16, 16)) -> dict[str, Any]:
    """The few plans fields the check reads, as nnU-Net's planner writes them."""
    return {"plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
            "configurations": {
                "3d_fullres": {"data_identifier": IDENT, "preprocessor_name": "DefaultPreprocessor",
                               "spacing": list(spacing), "patch_size": list(patch)},
                "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
                "2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                       "spacing": list(spacing[1:]), "patch_size": list(patch[1:])}}}


def dataset_dir(root: Path, n_training: int | None = None, labels: dict[str, Any] | None = None) -> Path:
    """An empty <nnUNet_preprocessed>/Dataset042_Test with its dataset.json."""
    d = root / "Dataset042_Test"
    d.mkdir(parents=True, exist_ok=True)
    ds: dict[str, Any] = {"channel_names": {"0": "CT"}, "labels": labels or {"background": 0, "organ": 1, "tumor": 2},
                          "file_ending": ".nii.gz"}
    if n_training is not None:
        ds["numTraining"] = n_training
    (d / "dataset.json").write_text(json.dumps(ds))
    return d


def arrays(shape: tuple[int, ...], seed: int = 0, zero_slab: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A normalised image and its label map: a sphere of organ with a tumour in it, background elsewhere; the
    first slab all zero in both (background outside the nonzero mask: blosc2 stores such chunks as specials)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(shape).astype(np.float32)
    grid = np.indices(shape[1:]).astype(np.float32)
    centre = np.array([s / 2 for s in shape[1:]], dtype=np.float32).reshape(-1, *([1] * (len(shape) - 1)))
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    seg = np.zeros((1, *shape[1:]), np.int16)
    seg[0][r < min(shape[1:]) / 3] = 1
    seg[0][r < min(shape[1:]) / 6] = 2
    if zero_slab:
        data[:, : shape[1] // 4] = 0
        seg[:, : shape[1] // 4] = 0
    return data, seg


def properties(data: np.ndarray, seg: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> dict[str, Any]:
    """The properties run_case_npy records for an image that needed neither cropping nor resampling."""
    shape = tuple(int(s) for s in data.shape[1:])
    locations = {}
    rng = np.random.default_rng(1)
    for label in (1, 2):
        where = np.argwhere(seg == label)
        locations[label] = where[rng.choice(len(where), min(len(where), 50), replace=False)] if len(where) \
            else np.zeros((0, 4), np.int64)
    return {"sitk_stuff": {"spacing": spacing, "origin": (0.0, 0.0, 0.0)}, "spacing": [np.float64(s) for s in spacing],
            "shape_before_cropping": shape, "bbox_used_for_cropping": [[0, s] for s in shape],
            "shape_after_cropping_and_before_resampling": shape, "class_locations": locations}


def save_case(folder: Path, case: str, data: np.ndarray, seg: np.ndarray, props: dict[str, Any],
              patch: tuple[int, ...] = (16, 16, 16)) -> None:
    """The last lines of DefaultPreprocessor.run_case_save: nnU-Net's own writing code path."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    folder.mkdir(parents=True, exist_ok=True)
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    block_data, chunk_data = comp_blosc2_params(data.shape, patch, data.itemsize)
    block_seg, chunk_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / case), chunks=chunk_data, blocks=block_data,
                                  chunks_seg=chunk_seg, blocks_seg=block_seg)


def write_case(folder: Path, case: str, shape: tuple[int, ...] = (1, 20, 18, 14), seed: int = 0,
               patch: tuple[int, ...] = (16, 16, 16)) -> None:
    data, seg = arrays(shape, seed)
    save_case(folder, case, data, seg, properties(data, seg), patch)


def dataset(root: Path, n: int = 3, shape: tuple[int, ...] = (1, 20, 18, 14)) -> Path:
    """A dataset folder with n intact cases case_000.. of the 3d_fullres configuration; returns the dataset dir."""
    d = dataset_dir(root, n_training=n)
    for i in range(n):
        write_case(d / IDENT, f"case_{i:03d}", shape, seed=i)
    return d


def copy_real(root: Path) -> Path | None:
    """A copy of the real tiny dataset nnUNetv2_plan_and_preprocess made, when it is there."""
    if not (REAL / "nnUNetPlans.json").is_file():
        return None
    return Path(shutil.copytree(REAL, root / REAL.name))


def truncate(path: Path, keep: int) -> int:
    """Cut the file to `keep` bytes (a cut copy); returns its old size."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(keep)
    return size


def nbytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    return math.prod(shape) * itemsize

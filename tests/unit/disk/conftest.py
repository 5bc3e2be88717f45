"""A preprocessed dataset of real nnU-Net file shapes in tmp_path (no preprocessing run), and runs and experiments
over it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.context import RunContext
from supervisor.layout import RunLayout

DATASET = "Dataset901_Tiny"


def _arch(dim: int, features: list[int], strides: list[list[int]]) -> dict[str, Any]:
    conv = "Conv3d" if dim == 3 else "Conv2d"
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": len(features), "features_per_stage": features,
                            "conv_op": f"torch.nn.modules.conv.{conv}",
                            "kernel_sizes": [[3] * dim for _ in features], "strides": strides,
                            "n_conv_per_stage": [2] * len(features),
                            "n_conv_per_stage_decoder": [2] * (len(features) - 1),
                            "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


# nnUNetv2_plan_and_preprocess's plans for supervisor.demo's tiny dataset (24 x 32 x 32 voxels, one channel, two
# labels), as nnU-Net 2.x wrote them, trimmed to the keys that matter here
TINY_PLANS: dict[str, Any] = {
    "dataset_name": DATASET, "plans_name": "nnUNetPlans",
    "configurations": {
        "2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 16, "patch_size": [32, 24],
               "spacing": [1.0, 1.0], "architecture": _arch(2, [32, 64, 128], [[1, 1], [2, 2], [2, 2]])},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [32, 32, 24],
                       "spacing": [1.0, 1.0, 1.0],
                       "architecture": _arch(3, [32, 64, 128, 256],
                                             [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]])},
    },
}
TINY_DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "sphere": 1}, "numTraining": 10,
                     "file_ending": ".nii.gz"}
CASE_SHAPE = [32, 32, 24]
CASES = [f"tiny_{i:03d}" for i in range(10)]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """nnUNet_preprocessed/Dataset901_Tiny with its plans, dataset.json, fingerprint and both data folders."""
    d = tmp_path / "pre" / DATASET
    for conf in TINY_PLANS["configurations"].values():
        (d / conf["data_identifier"]).mkdir(parents=True)
    (d / "nnUNetPlans.json").write_text(json.dumps(TINY_PLANS, indent=4))
    (d / "dataset.json").write_text(json.dumps(TINY_DATASET_JSON))
    (d / "dataset_fingerprint.json").write_text(json.dumps({
        "median_relative_size_after_cropping": 1.0, "shapes_after_crop": [CASE_SHAPE] * len(CASES),
        "spacings": [[1.0, 1.0, 1.0]] * len(CASES)}))
    (tmp_path / "res").mkdir()
    return d


def write_splits(dataset: Path, val_per_fold: int = 2) -> None:
    splits = [{"train": [c for c in CASES if c not in CASES[i * val_per_fold:(i + 1) * val_per_fold]],
               "val": CASES[i * val_per_fold:(i + 1) * val_per_fold]} for i in range(5)]
    (dataset / "splits_final.json").write_text(json.dumps(splits))


@pytest.fixture
def run_config(tmp_path: Path, dataset: Path) -> Callable[..., RunContext]:
    """A run.yaml over the dataset (extra YAML lines appended), loaded."""

    def make(extra: str = "", fold: int = 0, configuration: str = "3d_fullres") -> RunContext:
        path = tmp_path / f"run-{configuration}-{fold}.yaml"
        path.write_text(f"nnunet: {{dataset: 901, configuration: {configuration}, fold: {fold}, device: cpu}}\n"
                        "paths: {nnUNet_preprocessed: pre, nnUNet_results: res}\n" + extra)
        return RunContext.load(path)

    return make


@pytest.fixture
def experiment_file(tmp_path: Path, dataset: Path) -> Callable[[str], Path]:
    def make(extra: str = "") -> Path:
        path = tmp_path / "experiment.yaml"
        path.write_text("experiment: {configurations: [3d_fullres, 2d], folds: [0, 1]}\n"
                        "nnunet: {dataset: 901, device: cpu}\n"
                        "paths: {nnUNet_preprocessed: pre, nnUNet_results: res}\n" + extra)
        return path

    return make


def finish(layout: RunLayout, checkpoint_bytes: int = 1000, summary: bool = True) -> None:
    """A fold as nnU-Net leaves it: checkpoints, validation with its summary, logs; our run directory beside."""
    fold = layout.fold_dir
    (fold / "validation").mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        (fold / name).write_bytes(b"c" * checkpoint_bytes)
    if summary:
        (fold / "validation" / "summary.json").write_text("{}")
    (fold / "validation" / "tiny_000.nii.gz").write_bytes(b"s" * 10)
    (fold / "validation" / "tiny_000.npz").write_bytes(b"p" * 100)
    for name in ("debug.json", "progress.png", "training_log_2026_1_1_00_00_00.txt"):
        (fold / name).write_bytes(b"x" * 7)
    layout.supervisor_dir.mkdir(parents=True, exist_ok=True)
    (layout.supervisor_dir / "events.jsonl").write_text("")
    (layout.supervisor_dir / "attempt-1.log").write_text("log")
    (layout.supervisor_dir / "written.json").write_text("{}")
    (layout.supervisor_dir / "state.json").write_text(json.dumps({"state": "finished"}))

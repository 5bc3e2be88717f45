"""The sizing of a loaded run: its plans' estimates, a given allocation, the user's settings (nnunet.env and the
supervisor's environment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supervisor.context import RunContext
from supervisor.core.sizing import EXPORT_BASE_BYTES, MAIN_PROCESS_BYTES, Estimates, export_bytes
from supervisor.evidence.allocation import Allocation
from supervisor.sizing import estimates_for, estimates_from, segmentation_heads, sizing_for, user_sized
from tests.conftest import make_ctx

GIB = 1 << 30
PLANS = {"original_median_shape_after_transp": [256, 256, 160],
         "configurations": {"3d_fullres": {"patch_size": [128, 128, 128], "batch_size": 2,
                                           "median_image_size_in_voxels": [160, 160, 100]}}}
DATASET = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "sphere": 1}, "file_ending": ".nii.gz"}


def ctx_with(tmp_path: Path, plans: Any = PLANS, dataset: Any = DATASET, **kw: Any) -> RunContext:
    ctx = make_ctx(tmp_path, [], **kw)
    pre = ctx.paths.preprocessed / ctx.dataset_name
    for name, doc in (("nnUNetPlans.json", plans), ("dataset.json", dataset)):
        if doc is not None:
            (pre / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return ctx


def allocation(cpus: float, host: int, source: str, memory: int | None = 64 * GIB,
               memory_source: str = "64.0 GiB available on the machine") -> Allocation:
    return Allocation(host, cpus, source, memory, memory_source)


def test_the_plans_make_the_estimates(tmp_path: Path) -> None:
    est = estimates_for(ctx_with(tmp_path))
    assert est.from_plans and est.main == MAIN_PROCESS_BYTES
    # the export resamples to the original median shape, 2 heads
    assert est.export == export_bytes(2, 256 * 256 * 160, 160 * 160 * 100)
    assert est.worker > 300 << 20


def test_without_readable_plans_the_defaults(tmp_path: Path) -> None:
    assert estimates_for(ctx_with(tmp_path, plans="{not json")) == Estimates()
    assert estimates_for(ctx_with(tmp_path / "b", plans=None)) == Estimates()
    assert estimates_from({"configurations": {"3d_fullres": {"patch_size": ["x"]}}}, DATASET, "3d_fullres") == \
        Estimates()
    assert estimates_from(PLANS, DATASET, "2d") == Estimates()  # not in the plans: check says so, not this
    # no original shape: the preprocessed one
    plans = {"configurations": {"2d": {"patch_size": [64, 64], "batch_size": 12,
                                       "median_image_size_in_voxels": [100, 100]}}}
    assert estimates_from(plans, DATASET, "2d").export == export_bytes(2, 100 * 100, 100 * 100)


def test_segmentation_heads_as_nnunet_counts_them() -> None:
    assert segmentation_heads({"background": 0, "a": 1, "b": 2}) == 3
    assert segmentation_heads({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3}) == 3  # regions
    assert segmentation_heads(None) == 2


def test_a_slurm_task_of_4_cpus_on_a_128_core_node(tmp_path: Path) -> None:
    s = sizing_for(ctx_with(tmp_path), environ={}, allocation=allocation(4.0, 128, "SLURM_CPUS_PER_TASK=4"))
    assert s.env == {"nnUNet_n_proc_DA": "4", "nnUNet_def_n_proc": "4", "OMP_NUM_THREADS": "4"}
    assert s.document()["sized"] == s.env


def test_one_cpu_and_the_users_settings_from_both_places(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, nnunet_env={"nnUNet_n_proc_DA": "3"})
    s = sizing_for(ctx, environ={"OMP_NUM_THREADS": "2", "nnUNet_n_proc_DA": "9"},
                   allocation=allocation(1.0, 2, "CPU affinity (1 of 2 CPUs)"))
    assert s.env == {"nnUNet_def_n_proc": "1"}
    assert any(n.startswith("nnUNet_n_proc_DA=3 is your setting") for n in s.notes)  # nnunet.env wins
    assert any(n.startswith("OMP_NUM_THREADS=2 is your setting") for n in s.notes)


def test_user_sized_nnunet_env_over_the_environment() -> None:
    assert user_sized({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "8", "nnUNet_def_n_proc": "2", "PATH": "/x"}) == \
        {"OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "2"}


def test_a_small_memory_limit_with_the_plans_estimates(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path)
    est = estimates_for(ctx)
    limit = MAIN_PROCESS_BYTES + est.worker // 2  # not one worker
    s = sizing_for(ctx, environ={}, allocation=allocation(2.0, 2, "the host's 2 CPUs", limit,
                                                          "memory cgroup limit 3.2 GiB"))
    assert s.env["nnUNet_n_proc_DA"] == "0" and s.env["nnUNet_def_n_proc"] == "1"
    assert "estimates from the plans" in s.warnings[0]


def test_ddp_sizes_per_gpu(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path)
    nn = ctx.config.nnunet.model_copy(update={"device": "cuda", "num_gpus": 2})
    ctx = RunContext.from_config(ctx.config_path, ctx.config.model_copy(update={"nnunet": nn}))
    s = sizing_for(ctx, environ={}, allocation=allocation(8.0, 8, "the host's 8 CPUs"))
    assert s.env == {"nnUNet_n_proc_DA": "4", "nnUNet_def_n_proc": "4"}


def test_this_machine_as_it_is(tmp_path: Path) -> None:
    # read for real: whatever this machine is, the counts are whole numbers within nnU-Net's own
    s = sizing_for(ctx_with(tmp_path), environ={})
    assert s.notes
    for var, value in s.env.items():
        assert value.isdigit(), var
    assert int(s.env.get("nnUNet_def_n_proc", "8")) <= 8
    assert EXPORT_BASE_BYTES < estimates_for(ctx_with(tmp_path / "b")).export

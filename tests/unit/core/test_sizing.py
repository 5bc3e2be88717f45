"""Fitting nnU-Net's process counts to an allocation: the pure rule, with numbers."""

from __future__ import annotations

from typing import Any

from supervisor.core.sizing import (
    EXPORT_BASE_BYTES,
    Estimates,
    Sizing,
    augmentation_processes,
    batch_bytes,
    export_bytes,
    fit,
    training_bytes,
    validation_bytes,
)

GIB = 1 << 30
MIB = 1 << 20
EST = Estimates(main=3 * GIB, worker=512 * MIB, export=650 * MIB, from_plans=True)


def sized(**kw: Any) -> Sizing:
    """This 2-CPU VM by default: nnU-Net's own 2 workers (12 capped at the host's CPUs), plenty of memory."""
    args: dict[str, Any] = dict(host_cpus=2, cpus=2.0, cpu_source="the host's 2 CPUs", memory_bytes=24 * GIB,
                                memory_source="24.0 GiB available on the machine", default_workers=2, estimates=EST,
                                user={})
    args.update(kw)
    return fit(**args)


def test_an_unconstrained_workstation_gets_nothing_set() -> None:
    s = sized(host_cpus=16, cpus=16.0, cpu_source="the host's 16 CPUs", default_workers=12, memory_bytes=64 * GIB)
    assert s.env == {} and not s.warnings
    assert s.notes == ["nnU-Net's own process counts fit this allocation (the host's 16 CPUs; 24.0 GiB available on "
                       "the machine): nothing set"]
    assert s.document() == {"sized": {}, "notes": s.notes, "warnings": []}


def test_fewer_cpus_than_nnunets_eight_export_processes_caps_the_pool() -> None:
    # nnU-Net starts 8 export processes whatever the machine: on this 2-CPU VM, a load of 8 (x 8 torch threads)
    s = sized()
    assert s.env == {"nnUNet_def_n_proc": "2"}
    assert s.notes == ["nnUNet_def_n_proc=2 instead of nnU-Net's 8 (the host's 2 CPUs)"]


def test_one_cpu_of_two_by_affinity_sets_all_three_to_one() -> None:
    s = sized(cpus=1.0, cpu_source="CPU affinity (1 of 2 CPUs)")
    assert s.env == {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
    assert "nnUNet_n_proc_DA=1 instead of nnU-Net's 2 (CPU affinity (1 of 2 CPUs))" in s.notes
    assert s.document()["sized"] == s.env and not s.warnings


def test_a_slurm_task_of_4_cpus_on_a_128_core_node() -> None:
    s = sized(host_cpus=128, cpus=4.0, cpu_source="SLURM_CPUS_PER_TASK=4", default_workers=12, memory_bytes=64 * GIB,
              memory_source="SLURM_MEM_PER_NODE=65536 MB")
    assert s.env == {"nnUNet_n_proc_DA": "4", "nnUNet_def_n_proc": "4", "OMP_NUM_THREADS": "4"}
    assert any(n.startswith("OMP_NUM_THREADS=4 instead of nnU-Net's 128 (SLURM_CPUS_PER_TASK=4;") for n in s.notes)


def test_a_fractional_cgroup_quota_rounds_down_but_never_below_one() -> None:
    assert sized(cpus=0.5).env["OMP_NUM_THREADS"] == "1"
    assert sized(cpus=1.5).env["nnUNet_n_proc_DA"] == "1"
    assert sized(cpus=2.999999999).env.get("OMP_NUM_THREADS") is None  # a float's 3.0 is 3 CPUs


def test_memory_caps_the_workers_counting_the_validation_loaders_too() -> None:
    # 12 workers start 12 + 6 processes: 3 GiB + 18 x 512 MiB = 12 GiB; in 8 GiB: 7 + 3 (exactly 8 GiB)
    s = sized(host_cpus=16, cpus=16.0, default_workers=12, memory_bytes=8 * GIB,
              memory_source="memory cgroup limit 8.0 GiB")
    assert s.env["nnUNet_n_proc_DA"] == "7"
    assert training_bytes(7, EST) <= 8 * GIB < training_bytes(8, EST)
    note = next(n for n in s.notes if n.startswith("nnUNet_n_proc_DA"))
    assert "memory cgroup limit 8.0 GiB" in note and "estimates from the plans" in note


def test_memory_caps_the_export_pool() -> None:
    s = sized(memory_bytes=int(4.5 * GIB), memory_source="memory cgroup limit 4.5 GiB")
    assert s.env["nnUNet_def_n_proc"] == "2"  # 3 GiB + 2 x 650 MiB fit in 4.5 GiB
    s = sized(memory_bytes=4 * GIB, memory_source="memory cgroup limit 4.0 GiB")
    assert s.env["nnUNet_def_n_proc"] == "1"  # 3 GiB + 2 x 650 MiB do not fit in 4 GiB
    # and the workers: 2 (+1 for the validation loader) of 512 MiB need 4.5 GiB; 1 (+1) fit
    assert s.env["nnUNet_n_proc_DA"] == "1"


def test_too_little_memory_for_one_worker_warns_and_uses_none() -> None:
    s = sized(memory_bytes=3 * GIB + 100 * MIB, memory_source="SLURM_MEM_PER_NODE=3172 MB")
    assert s.env == {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}
    assert len(s.warnings) == 2
    assert "holds the trainer but not one augmentation worker" in s.warnings[0]
    assert "single-threaded augmentation" in s.warnings[0] and "estimates from the plans" in s.warnings[0]
    assert "final validation" in s.warnings[1]
    assert s.lines()[-2:] == [f"WARN {w}" for w in s.warnings]


def test_less_than_the_trainer_itself_says_so() -> None:
    s = sized(memory_bytes=GIB, memory_source="memory cgroup limit 1.0 GiB")
    assert s.env["nnUNet_n_proc_DA"] == "0" and "not even the trainer itself" in s.warnings[0]


def test_unknown_memory_fits_by_cpus_alone() -> None:
    s = sized(cpus=1.0, memory_bytes=None, memory_source="not known")
    assert s.env == {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
    assert not s.warnings


def test_the_users_setting_is_left_alone_and_said() -> None:
    s = sized(cpus=1.0, user={"nnUNet_n_proc_DA": "4", "OMP_NUM_THREADS": "2"})
    assert s.env == {"nnUNet_def_n_proc": "1"}
    assert any(n.startswith("nnUNet_n_proc_DA=4 is your setting; left as it is (fitted to this allocation it would "
                            "be 1") for n in s.notes)
    assert any(n.startswith("OMP_NUM_THREADS=2 is your setting") for n in s.notes)


def test_the_users_setting_under_too_little_memory_is_warned_about_not_changed() -> None:
    s = sized(memory_bytes=3 * GIB + 100 * MIB, user={"nnUNet_n_proc_DA": "2"})
    assert "nnUNet_n_proc_DA" not in s.env
    assert "your nnUNet_n_proc_DA=2 stays" in s.warnings[0]


def test_ddp_counts_per_gpu_and_every_rank_needs_its_memory() -> None:
    # 2 GPUs on 8 CPUs: nnUNet_n_proc_DA is per GPU, so 4 each; each rank exports with its own pool
    s = sized(host_cpus=8, cpus=8.0, default_workers=8, memory_bytes=64 * GIB, ranks=2)
    assert s.env == {"nnUNet_n_proc_DA": "4", "nnUNet_def_n_proc": "4"}
    s = sized(host_cpus=8, cpus=8.0, default_workers=8, memory_bytes=8 * GIB, ranks=2)
    assert s.env["nnUNet_n_proc_DA"] == "1"  # 2 x (3 GiB + 2 x 512 MiB) = 8 GiB
    assert validation_bytes(1, EST, 2) <= 8 * GIB < validation_bytes(2, EST, 2)


def test_on_the_cpu_the_omp_note_says_nnunets_main_process_takes_every_cpu() -> None:
    s = sized(cpus=1.0, device="cpu")
    assert any(n.startswith("OMP_NUM_THREADS=1") and "takes every host CPU" in n for n in s.notes)


def test_the_formulas() -> None:
    assert augmentation_processes(0) == 0 and augmentation_processes(1) == 2 and augmentation_processes(12) == 18
    # 2 x 128^3 patch of one channel: float32 image + the deep-supervision targets
    assert batch_bytes({"patch_size": [128, 128, 128], "batch_size": 2}, 1) == int(2 * 128**3 * (4 + 2.3))
    # the measured 10.5 M voxel 2-class case: ~240 MiB above the worker's base
    assert 230 * MIB < export_bytes(2, 256 * 256 * 160) - EXPORT_BASE_BYTES < 250 * MIB
    assert Estimates().words == "estimates without the plans"

"""Fitting nnU-Net's process counts to an allocation: the pure rule, with numbers."""

from __future__ import annotations

from typing import Any

from supervisor.core.sizing import Estimates, fit

GIB = 1 << 30
EST = Estimates(main=3 * GIB, worker=512 << 20, export=650 << 20)


def sized(**kw: Any) -> Any:
    args: dict[str, Any] = dict(host_cpus=2, cpus=2.0, cpu_source="the host's 2 CPUs", memory_bytes=24 * GIB,
                                memory_source="24 GiB available", default_workers=2, estimates=EST, user={})
    args.update(kw)
    return fit(**args)


def test_an_unconstrained_workstation_gets_nothing_set() -> None:
    s = sized(host_cpus=16, cpus=16.0, default_workers=12, memory_bytes=64 * GIB)
    assert s.env == {} and not s.warnings and "fit this allocation" in s.notes[0]


def test_fewer_cpus_than_nnunets_eight_export_processes_caps_the_pool() -> None:
    # nnU-Net starts 8 export processes whatever the machine: on this 2-CPU VM that is a load of 8
    assert sized().env == {"nnUNet_def_n_proc": "2"}


def test_one_cpu_of_two_by_affinity_sets_all_three_to_one() -> None:
    s = sized(cpus=1.0, cpu_source="CPU affinity (1 of 2 CPUs)")
    assert s.env == {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
    assert any("instead of 2, nnU-Net's augmentation workers here (CPU affinity (1 of 2 CPUs))" in n for n in s.notes)


def test_a_slurm_task_of_4_cpus_on_a_128_core_node() -> None:
    s = sized(host_cpus=128, cpus=4.0, cpu_source="SLURM_CPUS_PER_TASK=4", default_workers=12,
              memory_bytes=64 * GIB)
    assert s.env == {"nnUNet_n_proc_DA": "4", "nnUNet_def_n_proc": "4", "OMP_NUM_THREADS": "4"}


def test_a_fractional_cgroup_quota_rounds_down_but_never_below_one() -> None:
    assert sized(cpus=0.5).env["OMP_NUM_THREADS"] == "1"
    assert sized(cpus=1.5).env["nnUNet_n_proc_DA"] == "1"


def test_memory_caps_the_export_pool_and_the_workers() -> None:
    s = sized(memory_bytes=int(4.5 * GIB), memory_source="memory cgroup limit 4.5 GiB")
    assert s.env["nnUNet_def_n_proc"] == "2"  # (4.5 - 3) GiB / 650 MiB
    assert "nnUNet_n_proc_DA" not in s.env  # 2 workers of 512 MiB fit: nnU-Net's own 2


def test_too_little_memory_for_one_worker_warns_and_uses_none() -> None:
    s = sized(memory_bytes=3 * GIB + (100 << 20), memory_source="SLURM_MEM_PER_NODE=3172 MB")
    assert s.env["nnUNet_n_proc_DA"] == "0" and s.env["nnUNet_def_n_proc"] == "1"
    assert s.warnings and "not one augmentation worker" in s.warnings[0]


def test_the_users_setting_is_left_alone_and_said() -> None:
    s = sized(cpus=1.0, user={"nnUNet_n_proc_DA": "4"})
    assert "nnUNet_n_proc_DA" not in s.env and s.env["nnUNet_def_n_proc"] == "1"
    assert any("nnUNet_n_proc_DA=4 is your setting" in n and "would be 1" in n for n in s.notes)

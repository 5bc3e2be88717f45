"""doctor: the known-bad checks over made-up facts, the exit code, and each gatherer with what it reads injected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.observe import doctor
from supervisor.observe.doctor import KNOWN, Disk, Facts, Known

GOOD_VERSIONS = {"nnunetv2": "2.8.1", "torch": "2.8.0+cu128", "batchgenerators": "0.25.5", "threadpoolctl": "3.8.0",
                 "blosc2": "3.5.1", "SimpleITK": "2.5.2", "numpy": "2.2.6", "dynamic-network-architectures": "0.4.4"}
CUDA_TORCH = {"version": "2.8.0+cu128", "cuda": "12.8", "cudnn": 91002, "cuda_available": True,
              "devices": ["NVIDIA H100 80GB HBM3"], "warnings": []}


def facts(**changes: Any) -> Facts:
    """A healthy CUDA machine, with the given changes; versions merge into the healthy ones."""
    versions = {**GOOD_VERSIONS, **changes.pop("versions", {})}
    base: dict[str, Any] = {
        "python": "3.11.7", "versions": versions, "torch": dict(CUDA_TORCH),
        "driver": {"source": "nvidia-smi", "driver_version": "570.86", "gpus": ["NVIDIA H100 80GB HBM3, 81559 MiB"]},
        "shm": (16 << 30, 16 << 30), "compiler": "/usr/bin/cc", "predictor_weights_only_false": True,
        "environ": {}}
    base.update(changes)
    return Facts(**base)


def keys(f: Facts) -> list[str]:
    return [k.key for k in doctor.findings(f)]


def test_a_healthy_machine_has_no_known_problem_and_exits_0() -> None:
    f = facts()
    assert keys(f) == []
    doc = doctor.report(f)
    assert doc["exit_code"] == 0 and doc["ok"] and doc["found"] == []
    assert "no known problem found" in doctor.text(doc)
    json.dumps(doc)  # --json prints it


def test_dockers_64_mib_shm_is_a_known_problem_with_its_issue() -> None:
    f = facts(shm=(64 << 20, 60 << 20))
    assert keys(f) == ["shm_small"]
    doc = doctor.report(f)
    assert doc["exit_code"] == 1 and not doc["ok"]
    found = doc["found"][0]
    assert found["reference"] == "MIC-DKFZ/nnUNet#1343"
    assert found["url"] == "https://github.com/MIC-DKFZ/nnUNet/issues/1343"
    assert "Bus error" in found["symptom"] and "--shm-size" in found["advice"]
    out = doctor.text(doc)
    assert "PROBLEM  shm_small" in out and "MIC-DKFZ/nnUNet#1343" in out
    assert keys(facts(shm=(65 << 20, 65 << 20))) == []  # more than docker's default: not this check's business
    assert keys(facts(shm=None)) == []  # no /dev/shm at all (macOS): not known


def test_threadpoolctl_failing_in_the_probe_is_the_dying_workers_problem() -> None:
    torch = {**CUDA_TORCH, "threadpool_error": "AttributeError: 'NoneType' object has no attribute 'split'"}
    assert keys(facts(torch=torch)) == ["threadpoolctl_fails"]
    assert doctor.report(facts(torch=torch))["found"][0]["reference"] == "MIC-DKFZ/nnUNet#1437"


def test_numpy2_with_a_module_built_for_numpy1() -> None:
    warn = ["A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0 as it may crash."]
    assert keys(facts(versions={"numpy": "2.0.0"}, torch={**CUDA_TORCH, "warnings": warn})) == ["numpy2_abi"]
    assert keys(facts(versions={"numpy": "1.26.4"}, torch={**CUDA_TORCH, "warnings": warn})) == []
    assert keys(facts(versions={"numpy": "2.0.0"})) == []  # numpy 2 alone is fine


@pytest.mark.parametrize(("torch", "passes", "found"), [
    ("2.6.0", False, True), ("2.10.1", False, True), ("2.5.1", False, False), ("2.6.0", True, False),
    ("2.6.0", None, False),  # the predictor's source could not be read: not known
])
def test_torch26_weights_only_needs_a_predictor_that_passes_weights_only_false(torch: str, passes: bool | None,
                                                                                 found: bool) -> None:
    f = facts(versions={"torch": torch}, predictor_weights_only_false=passes)
    assert ("torch26_weights_only" in keys(f)) is found


@pytest.mark.parametrize(("version", "cuda", "cudnn", "found"), [
    ("2.9.0+cu128", True, 91500, True),  # 2.9.0 turns cuDNN off for conv3d whatever cuDNN there is
    ("2.9.1", True, 91002, True), ("2.9.1", True, 91500, False), ("2.9.1", True, None, True),
    ("2.8.0", True, 91002, False), ("2.10.0", True, 91002, False),
    ("2.9.1+cpu", False, None, False),  # no GPU here: 3D convolutions on the CPU are not this problem
])
def test_torch29_conv3d_on_cuda(version: str, cuda: bool, cudnn: int | None, found: bool) -> None:
    torch = {**CUDA_TORCH, "cuda_available": cuda, "cudnn": cudnn}
    driver = {"source": "nvidia-smi", "gpus": ["x"]} if cuda else {"error": "none"}
    f = facts(versions={"torch": version}, torch=torch, driver=driver)
    assert ("torch29_conv3d" in keys(f)) is found
    if found:
        assert doctor.report(f)["found"][0]["reference"] == "MIC-DKFZ/nnUNet#3002"


def test_nnunetv2_264_preprocessing_and_other_versions() -> None:
    assert keys(facts(versions={"nnunetv2": "2.6.4"})) == ["nnunet264_preprocessing"]
    assert keys(facts(versions={"nnunetv2": "2.6.3"})) == []
    assert keys(facts(versions={"nnunetv2": None})) == []  # not installed: no version check applies


def test_no_c_compiler_matters_only_where_nnunet_compiles() -> None:
    assert keys(facts(compiler=None)) == ["no_c_compiler"]
    assert keys(facts(compiler=None, environ={"nnUNet_compile": "f"})) == []
    assert keys(facts(compiler=None, environ={"nnUNet_compile": "False"})) == []
    cpu = {**CUDA_TORCH, "cuda_available": False}
    assert keys(facts(compiler=None, torch=cpu, driver={})) == []  # nnU-Net compiles on CUDA only


def test_a_caution_is_printed_but_exits_0() -> None:
    f = facts(versions={"batchgenerators": "0.25.1"})
    assert keys(f) == ["batchgenerators_threadpool"]
    doc = doctor.report(f)
    assert doc["exit_code"] == 0 and doc["found"][0]["severity"] == "caution"
    assert "CAUTION  batchgenerators_threadpool" in doctor.text(doc)
    both = doctor.report(facts(versions={"batchgenerators": "0.25.1"}, shm=(1 << 20, 0)))
    assert both["exit_code"] == 1 and len(both["found"]) == 2


def test_the_table_is_data_a_new_entry_is_one_line_and_a_failing_check_is_left_out() -> None:
    def broken(f: Facts) -> bool:
        raise KeyError("no such fact")

    table = (*KNOWN, Known("new", lambda f: doctor.in_range(f, "blosc2", "3.5", "3.6"), "symptom", "advice",
                           "MIC-DKFZ/nnUNet#1"), Known("broken", broken, "s", "a", "MIC-DKFZ/nnUNet#2"))
    found = doctor.findings(facts(), table)
    assert [k.key for k in found] == ["new"]
    assert doctor.exit_code(found) == 1
    assert doctor.report(facts(), table)["found"][0]["key"] == "new"
    for k in KNOWN:  # every entry cites a repository and an issue number
        repo, _, number = k.reference.partition("#")
        assert repo.count("/") == 1 and number.isdigit() and k.severity in ("problem", "caution"), k.key
    assert len({k.key for k in KNOWN}) == len(KNOWN)


def test_versions_parse_and_compare() -> None:
    assert doctor.parse_version("2.9.0+cu128") == (2, 9, 0)
    assert doctor.parse_version("3.0.0b4") == (3, 0, 0)
    assert doctor.parse_version("garbage") is None and doctor.parse_version(None) is None
    f = facts(versions={"torch": "2.9"})
    assert doctor.in_range(f, "torch", "2.9", "2.10") and doctor.in_range(f, "torch", "2.9.0")
    assert not doctor.in_range(f, "torch", "2.9.1") and not doctor.in_range(f, "absent", None, "9")


def _completed(stdout: str, stderr: str = "", rc: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess([], rc, stdout, stderr)


def test_torch_probe_runs_python_c_and_reads_its_json() -> None:
    seen: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        assert kw["timeout"] == 5 and kw["capture_output"]
        return _completed("noise\nNNUNET_SUPERVISE_PROBE " + json.dumps({"version": "2.8.0", "cudnn": 91002}) + "\n",
                          "A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0")

    got = doctor.torch_probe("/venv/bin/python", run, timeout_s=5)
    assert seen[0][:2] == ["/venv/bin/python", "-c"] and "import torch" in seen[0][2]
    assert got["version"] == "2.8.0" and got["cudnn"] == 91002
    assert any("compiled using NumPy 1.x" in w for w in got["warnings"])  # numpy says it on stderr


def test_torch_probe_failures_are_facts_not_tracebacks() -> None:
    def timeout(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(argv, 5)

    def missing(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory")

    assert "longer than 5 s" in doctor.torch_probe("py", timeout, 5)["error"]
    assert "could not start" in doctor.torch_probe("py", missing)["error"]
    crashed = doctor.torch_probe("py", lambda argv, **kw: _completed("", "Segmentation fault", -11))
    assert "exited -11" in crashed["error"] and "Segmentation fault" in crashed["error"]
    doc = doctor.report(facts(torch=crashed))
    assert "could not be imported" in doctor.text(doc)


@pytest.mark.process
def test_the_probe_itself_runs_in_a_python_without_torch(tmp_path: Path) -> None:
    """The probe's code is real Python: run it with torch and threadpoolctl made unimportable."""
    block = tmp_path / "block"
    block.mkdir()
    for name in ("torch", "threadpoolctl"):
        (block / f"{name}.py").write_text("raise ImportError('not here')\n")
    env = {**os.environ, "PYTHONPATH": str(block)}

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, **kw)

    got = doctor.torch_probe(sys.executable, run, timeout_s=60)
    assert got["error"] == "ImportError: not here" and got["threadpool_error"] == "ImportError: not here"
    assert got["python"] and "numpy" in got


def test_driver_from_nvidia_smi_then_nvml() -> None:
    smi = doctor.driver_info(lambda argv, **kw: _completed("570.86.15, NVIDIA H100 80GB HBM3, 81559 MiB\n"),
                             which=lambda name: "/usr/bin/nvidia-smi")
    assert smi == {"source": "nvidia-smi", "driver_version": "570.86.15", "gpus": ["NVIDIA H100 80GB HBM3, 81559 MiB"]}
    nvml = doctor.driver_info(which=lambda name: None,
                              nvml=lambda: {"source": "NVML", "driver_version": "550.1", "gpus": []})
    assert nvml["driver_version"] == "550.1"

    def no_driver() -> dict[str, Any]:
        raise RuntimeError("NVML Shared Library Not Found")

    none = doctor.driver_info(lambda argv, **kw: _completed("", "NVIDIA-SMI has failed", 9),
                              which=lambda name: "/usr/bin/nvidia-smi", nvml=no_driver)
    assert "nvidia-smi exited 9" in none["error"] and "NVML Shared Library Not Found" in none["error"]
    assert "NVIDIA driver" in doctor.text(doctor.report(facts(driver=none)))


def test_nnunet_folders_from_the_config_over_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "run.yaml"
    cfg.parent.mkdir()
    cfg.write_text("nnunet: {dataset: 4, configuration: 3d_fullres}\npaths: {nnUNet_results: ../res}\n")
    env = {"nnUNet_results": "/elsewhere", "nnUNet_preprocessed": str(tmp_path / "pre")}
    notes: list[str] = []
    folders = doctor.nnunet_folders(cfg, env, notes)
    assert folders == [("nnUNet_raw", None, "not set"),
                       ("nnUNet_preprocessed", (tmp_path / "pre").resolve(), "the environment"),
                       ("nnUNet_results", (tmp_path / "res").resolve(), "the config")]
    assert notes == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("nnunet: [unclosed\n")
    folders = doctor.nnunet_folders(bad, env, notes)
    assert folders[2] == ("nnUNet_results", Path("/elsewhere"), "the environment")
    assert notes and "could not be read" in notes[0]


def test_disk_space_of_a_missing_folder_is_measured_where_it_would_be(tmp_path: Path) -> None:
    (tmp_path / "res").mkdir()
    disks = doctor.disk_usage([("nnUNet_results", tmp_path / "res", "the config"),
                               ("nnUNet_preprocessed", tmp_path / "not" / "yet", "the environment"),
                               ("nnUNet_raw", None, "not set")])
    assert disks[0].exists and disks[0].free_bytes is not None and disks[0].measured_at == str(tmp_path / "res")
    assert not disks[1].exists and disks[1].measured_at == str(tmp_path)
    assert disks[2] == Disk("nnUNet_raw", None, source="not set")
    out = doctor.text(doctor.report(facts(disks=disks)))
    assert "missing; measured at" in out and "nnUNet_raw" in out


def test_predictor_source_is_read_not_imported(tmp_path: Path) -> None:
    good, old = tmp_path / "good.py", tmp_path / "old.py"
    good.write_text("c = torch.load(join(a, f'fold_{f}', n),\n"
                    "    map_location=torch.device('cpu'), weights_only=False)\n")
    old.write_text("c = torch.load(join(a, f'fold_{f}', n),\n    map_location=torch.device('cpu'))\n")
    assert doctor.predictor_passes_weights_only(lambda rel: good) is True
    assert doctor.predictor_passes_weights_only(lambda rel: old) is False
    assert doctor.predictor_passes_weights_only(lambda rel: tmp_path / "absent.py") is None


def test_compiler_lookup_prefers_cc() -> None:
    found = {"clang": "/usr/bin/clang", "mycc": "/opt/mycc"}
    assert doctor.find_compiler({"CC": "mycc"}, found.get) == "/opt/mycc"
    assert doctor.find_compiler({}, found.get) == "/usr/bin/clang"
    assert doctor.find_compiler({}, lambda name: None) is None


def test_gather_with_the_probe_injected(tmp_path: Path) -> None:
    f = doctor.gather(None, {"nnUNet_results": str(tmp_path), "HOME": "/nowhere", "SECRET_TOKEN": "x"},
                      probe=lambda: {"version": "2.8.0", "cuda_available": False})
    assert f.torch["version"] == "2.8.0" and f.python
    assert f.versions.get("nnunetv2") is not None  # importlib.metadata, nothing imported
    assert f.environ == {"nnUNet_results": str(tmp_path)}  # only what a report needs, never other variables
    assert [d.name for d in f.disks] == ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"]
    doc = doctor.report(f)
    json.dumps(doc)
    assert doc["exit_code"] in (0, 1)

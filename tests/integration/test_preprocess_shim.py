"""supervisor.trainer.preprocess against nnU-Net's own nnUNetv2_plan_and_preprocess on the tiny dataset (6 cases):
the same files, byte for byte; run again after two cases lost their .pkl (a kill mid-case) it redoes those two and
touches nothing else; a bad -d is one line and exit 2.

Real nnU-Net on CPU. The reference runs while the shim runs twice, so the whole file takes about a minute.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervisor.demo.dataset import DATASET_NAME, nnunet_env, write_raw_dataset
from supervisor.trainer.preprocess import NP_ENV, PARTIAL, PREFIX

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIGURATIONS = {"3d_fullres": "nnUNetPlans_3d_fullres", "2d": "nnUNetPlans_2d"}  # name: data identifier
FOLDERS = [*CONFIGURATIONS.values(), "gt_segmentations"]
LOST = ("tiny_001", "tiny_004")  # the cases whose .pkl the "kill" took
ARGS = ["-d", "901", "-c", *CONFIGURATIONS, "-np", "1"]


def env(root: Path, raw: Path) -> dict[str, str]:
    e = nnunet_env(raw, root / "pre", root / "results")
    e.pop(NP_ENV, None)
    return e


def shim(root: Path, raw: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor.trainer.preprocess", *args], env=env(root, raw),
                          cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def files(pre: Path) -> dict[str, str]:
    """sha256 of every file in the configuration folders and gt_segmentations, by path under the dataset folder."""
    base = pre / DATASET_NAME
    return {f"{d}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for d in FOLDERS for p in sorted((base / d).iterdir())}


def mtimes(pre: Path) -> dict[str, int]:
    base = pre / DATASET_NAME
    return {str(p.relative_to(base)): p.stat().st_mtime_ns for p in base.rglob("*") if p.is_file()}


@dataclass
class Runs:
    ref: Path  # nnU-Net's nnUNet_preprocessed
    shim: Path  # ours
    first: subprocess.CompletedProcess[str]
    first_files: dict[str, str]
    second: subprocess.CompletedProcess[str]
    before_second: dict[str, int]  # mtimes after the "kill"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("preprocess")
    raw = root / "raw"
    write_raw_dataset(raw, 6)  # both read the same raw data
    tool = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    with open(root / "nnunet.log", "wb") as log:
        ref = subprocess.Popen([str(tool), *ARGS], env=env(root / "ref", raw), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        first = shim(root / "ours", raw, *ARGS)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
        ours = root / "ours" / "pre"
        first_files = files(ours)
        for data_identifier in CONFIGURATIONS.values():
            for case in LOST:
                (ours / DATASET_NAME / data_identifier / f"{case}.pkl").unlink()
        before = mtimes(ours)
        second = shim(root / "ours", raw, *ARGS)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
        assert ref.wait(timeout=300) == 0, (root / "nnunet.log").read_text()[-3000:]
    finally:
        if ref.poll() is None:
            ref.kill()
    return Runs(root / "ref" / "pre", ours, first, first_files, second, before)


def announced(out: str) -> list[str]:
    return [line[len(PREFIX):] for line in out.splitlines() if line.startswith(PREFIX)]


def test_a_first_run_writes_what_nnunet_writes(runs: Runs) -> None:
    import blosc2
    import numpy as np

    steps = announced(runs.first.stdout)
    assert steps[:2] == ["fingerprint", "planning"] and steps[-2:] == ["gt_segmentations", "done"]
    for c in CONFIGURATIONS:
        assert f"configuration {c}: 0 of 6 cases already preprocessed, 6 to go" in steps
    ref = files(runs.ref)
    for d in FOLDERS:  # the same names in each folder ...
        assert sorted(k for k in runs.first_files if k.startswith(d + "/")) == \
            sorted(k for k in ref if k.startswith(d + "/"))
    assert runs.first_files == ref  # ... and the same bytes, .b2nd and .pkl included
    for name in ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json"):
        assert (runs.shim / DATASET_NAME / name).read_bytes() == (runs.ref / DATASET_NAME / name).read_bytes()
    for data_identifier in CONFIGURATIONS.values():  # and the arrays, opened as nnUNetDatasetBlosc2.load_case does
        for suffix in (".b2nd", "_seg.b2nd"):
            a, b = (blosc2.open(urlpath=str(pre / DATASET_NAME / data_identifier / f"tiny_000{suffix}"), mode="r",
                                dparams={"nthreads": 1}, mmap_mode="r")[:] for pre in (runs.shim, runs.ref))
            assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def test_b_rerun_after_a_kill_redoes_only_the_cases_without_pkl(runs: Runs) -> None:
    steps = announced(runs.second.stdout)
    assert steps[:2] == ["fingerprint kept", "plans kept"] and steps[-1] == "done"
    for c in CONFIGURATIONS:
        assert f"configuration {c}: 4 of 6 cases already preprocessed, 2 to go" in steps
    assert sorted(s for s in steps if s.startswith("preprocessed ")) == sorted(2 * [f"preprocessed {c}" for c in LOST])
    after = mtimes(runs.shim)
    redone = {f"{d}/{case}{suffix}" for d in CONFIGURATIONS.values() for case in LOST
              for suffix in (".b2nd", "_seg.b2nd")}
    for path, mtime in runs.before_second.items():
        if path not in redone:  # everything else (other cases, gt, fingerprint, plans) untouched
            assert after[path] == mtime, path
    assert files(runs.shim) == files(runs.ref)  # the redone cases are nnU-Net's bytes too
    # the arrays of the unfinished cases were moved aside (blosc2 will not write over them), not deleted
    partial = runs.shim / DATASET_NAME / PARTIAL
    assert sorted(str(p.relative_to(partial)) for p in partial.rglob("*.b2nd")) == sorted(redone)


@pytest.mark.parametrize("args, names", [
    (["-d", "999"], "-d 999"),
    (["-d", "Dataset999_Missing"], "-d Dataset999_Missing"),
    (["-d", "tiny"], "-d 'tiny'"),
])
def test_c_a_bad_dataset_is_one_line_and_exit_2(tmp_path: Path, args: list[str], names: str) -> None:
    (tmp_path / "raw").mkdir()
    out = shim(tmp_path, tmp_path / "raw", *args, "-c", "2d", "-np", "1")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX + "error: " + names), out.stderr
    assert "Traceback" not in out.stderr

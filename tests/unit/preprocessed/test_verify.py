"""verify_preprocessed, the caller's entry: the report and its lines, and the deep read through its real subprocess."""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
import pytest

import supervisor.preprocessed as package
from supervisor.preprocessed import verify
from supervisor.preprocessed.cheap import CaseProblem
from supervisor.preprocessed.frame import read_frame
from supervisor.preprocessed.verify import DeepCheckError, verify_deep, verify_preprocessed
from tests.unit.preprocessed.cases import IDENT, arrays, copy_real, dataset, plans, properties, save_case, truncate

PLANS = plans()


def test_an_intact_dataset_reports_every_case_and_no_problem(tmp_path: Path) -> None:
    d = dataset(tmp_path, 3)
    report = verify_preprocessed(d, PLANS, "3d_fullres")
    assert report.ok and report.cases_checked == 3 and report.lines() == [] and report.folder == d / IDENT
    assert report.unchecked == "" and not report.missing_folder and report.damaged_cases == []


def test_a_damaged_case_is_one_line_with_what_to_run_and_what_that_does(tmp_path: Path) -> None:
    d = dataset(tmp_path, 3)
    whole = truncate(d / IDENT / "case_001.b2nd", 4096)
    report = verify_preprocessed(d, PLANS, "3d_fullres")
    assert report.damaged_cases == ["case_001"] and not report.ok
    first, closing = report.lines()
    assert first == (f"case_001: case_001.b2nd is truncated (4096 of {whole} bytes) — rerun nnUNetv2_preprocess "
                     "-d 42 -c 3d_fullres")
    assert closing.startswith("nnUNetv2_preprocess -d 42 -c 3d_fullres deletes nnUNetPlans_3d_fullres/ and "
                              "preprocesses every case again: nnU-Net cannot redo only the damaged cases")
    other = {**PLANS, "plans_name": "nnUNetResEncUNetMPlans"}
    assert "nnUNetv2_preprocess -d 42 -plans_name nnUNetResEncUNetMPlans -c 3d_fullres" in \
        verify_preprocessed(d, other, "3d_fullres").lines()[0]


def test_the_callers_own_advice_ends_one_line_per_damaged_case(tmp_path: Path) -> None:
    """The form `check` prints (preflight passes its own nnUNetv2_preprocess advice)."""
    d = dataset(tmp_path, 2)
    (d / IDENT / "case_000.pkl").unlink()
    truncate(d / IDENT / "case_000_seg.b2nd", 0)
    assert verify_preprocessed(d, PLANS, "3d_fullres").lines("Run it again.") == [
        f"preprocessed case case_000 in {d / IDENT} is damaged: case_000_seg.b2nd is empty (0 bytes); case_000.pkl "
        "is missing (nnU-Net writes it last: this case's preprocessing did not finish). Run it again."]


def test_a_missing_folder_or_configuration(tmp_path: Path) -> None:
    d = dataset(tmp_path, 1)
    report = verify_preprocessed(d, PLANS, "2d")
    assert report.missing_folder == f"{d / 'nnUNetPlans_2d'} is missing" and report.cases_checked == 0
    assert report.lines() == [f"{d / 'nnUNetPlans_2d'} is missing — run nnUNetv2_preprocess -d 42 -c 2d"]
    assert verify_preprocessed(d, PLANS, "3d_lowres").folder_problems == [
        "configuration '3d_lowres' is not in the plans: nnU-Net cannot tell where its preprocessed data is"]
    cascade = verify_preprocessed(d, PLANS, "3d_cascade_fullres")  # reads 3d_fullres's data
    assert cascade.ok and cascade.folder == d / IDENT


def test_the_cheap_check_takes_about_a_millisecond_a_case(tmp_path: Path) -> None:
    d = dataset(tmp_path, 20)
    report = verify_preprocessed(d, PLANS, "3d_fullres")
    assert report.cases_checked == 20 and report.seconds < 2  # a generous bound on a loaded CI machine


def test_nothing_the_daemon_imports_here_imports_numpy_blosc2_or_the_deep_read() -> None:
    forbidden = {"numpy", "blosc2", "torch", "nnunetv2", "supervisor.preprocessed.deep"}
    folder = Path(package.__file__).parent
    for name in ("__init__.py", "cheap.py", "frame.py", "verify.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m in forbidden or m.split(".")[0] in forbidden}, name


# ---- the deep read's loop, without a process: a crash is the crashing case's problem ----

def test_a_case_that_crashes_the_reader_is_named_and_the_rest_still_read(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    runs: list[list[str]] = []

    def fake(request: dict[str, Any], env: Any, timeout_s: float) -> tuple[Any, ...]:
        runs.append(list(request["cases"]))
        if request["cases"][0] == "a":  # a done, b crashes blosc2
            return None, [{"case": "a", "problems": [], "notes": []}], "b", -11, "Segmentation fault"
        return {"results": [{"case": c, "problems": [], "notes": []} for c in request["cases"]]}, [], None, 0, ""

    monkeypatch.setattr(verify, "_run_deep_once", fake)
    result = verify_deep(tmp_path, ["a", "b", "c", "d"], {})
    assert runs == [["a", "b", "c", "d"], ["c", "d"]] and result.cases_checked == 4
    assert result.problems == [CaseProblem("b", "", "crashed the blosc2 reader (exit -11: Segmentation fault): a "
                                                    "file of this case is damaged inside")]
    monkeypatch.setattr(verify, "_run_deep_once", lambda *a: (None, [], None, 1, "ImportError: blosc2"))
    with pytest.raises(DeepCheckError, match="ImportError: blosc2"):
        verify_deep(tmp_path, ["a"], {})


# ---- the deep read, through the real subprocess ----

@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five cases: 0 intact, and four the cheap check passes but whose content is wrong."""
    d = dataset(tmp_path_factory.mktemp("deep"), 5)
    folder = d / IDENT
    for case in ("case_001", "case_002", "case_003"):  # blosc2 will not write over an existing .b2nd
        for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}.pkl"):
            (folder / name).unlink()
    data, seg = arrays((1, 20, 18, 14), seed=1)
    data[0, 10, 9, 7] = np.nan
    save_case(folder, "case_001", data, seg, properties(data, seg))
    data, seg = arrays((1, 20, 18, 14), seed=2)
    bad = seg.copy()
    bad[0, 10, 9, 7] = 9  # no label of dataset.json
    save_case(folder, "case_002", data, bad, properties(data, seg))
    data, seg = arrays((1, 20, 18, 14), seed=3)
    props = properties(data, seg)
    props["spacing"] = [np.float64(2.0), np.float64(1.0), np.float64(1.0)]  # resamples to (40, 18, 14)
    save_case(folder, "case_003", data, seg, props)
    image = folder / "case_004.b2nd"
    with open(image, "rb") as f:
        info = read_frame(f, image.stat().st_size)
    raw = bytearray(image.read_bytes())
    # The first chunk's block offsets (after its 32-byte header) overwritten: frame header, index and trailer intact.
    # (Bytes changed inside the compressed data may instead decode to other values without an error: blosc2
    # keeps no checksum, so no reader can tell.)
    first = info.header_len + 32
    raw[first:first + 8] = b"\xff" * 8
    image.write_bytes(bytes(raw))
    return d


@pytest.mark.process
def test_the_deep_read_finds_what_only_decompressing_shows(damaged: Path) -> None:
    assert verify_preprocessed(damaged, PLANS, "3d_fullres").ok  # the cheap check sees none of it
    report = verify_preprocessed(damaged, PLANS, "3d_fullres", deep=True)
    got: dict[str, list[tuple[str, str]]] = {}
    for p in report.problems:
        got.setdefault(p.case, []).append((p.file, p.problem))
    assert report.deep and report.damaged_cases == ["case_001", "case_002", "case_003", "case_004"]
    assert got["case_001"] == [("case_001.b2nd", "holds 1 NaN or infinite value(s) of 5040: training on it gives "
                                                 "NaN losses (is the raw image finite?)")]
    assert ("case_002_seg.b2nd", "holds value(s) [9] that are no label of dataset.json: its content is "
                                 "damaged") in got["case_002"]
    assert got["case_003"][0][1].startswith("is [20, 18, 14], its properties resample to [40, 18, 14]")
    # blosc2 up to 4.14 opens such a frame and fails on decompressing it; 4.15 already refuses to open it
    assert got["case_004"][0][0] == "case_004.b2nd" and got["case_004"][0][1].startswith(
        ("does not decompress", "cannot be opened"))
    pickle.dumps(report.problems)  # plain data


@pytest.mark.process
def test_the_deep_read_of_a_truncated_file_and_of_intact_real_cases(tmp_path: Path) -> None:
    d = dataset(tmp_path, 2)
    truncate(d / IDENT / "case_001_seg.b2nd", 300)
    result = verify_deep(d / IDENT, ["case_000", "case_001"], dict(os.environ),
                         {"format": "b2nd", "labels": [-1, 0, 1, 2], "default_preprocessor": True})
    assert result.cases_checked == 2 and [(p.case, p.file) for p in result.problems] == \
        [("case_001", "case_001_seg.b2nd")]
    assert result.problems[0].problem.startswith("does not decompress (RuntimeError")
    real = copy_real(tmp_path)
    if real is not None:  # the real tiny dataset nnUNetv2_plan_and_preprocess made, when this machine has it
        real_plans = json.loads((real / "nnUNetPlans.json").read_text())
        for configuration in ("3d_fullres", "2d"):
            report = verify_preprocessed(real, real_plans, configuration, deep=True)
            assert report.ok and report.cases_checked == 10, report.lines()


def test_the_pickle_of_a_real_case_needs_only_numpy_globals(tmp_path: Path) -> None:
    """The deep read loads properties with numpy's array globals only; nnU-Net's own pickles need no more."""
    from supervisor.preprocessed.deep import load_properties

    data, seg = arrays((1, 8, 8, 8))
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(properties(data, seg)))
    props, note = load_properties(tmp_path / "p.pkl")
    assert note is None and props is not None and isinstance(props["class_locations"][1], np.ndarray)
    (tmp_path / "q.pkl").write_bytes(pickle.dumps({"x": blosc2.Codec}))
    assert load_properties(tmp_path / "q.pkl")[1] == "q.pkl names blosc2.Codec, outside numpy's arrays: its " \
                                                     "properties were not compared"


def test_a_deep_read_that_cannot_run_is_said_not_passed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    d = dataset(tmp_path, 1)
    monkeypatch.setattr(verify, "_run_deep_once", lambda *a: (None, [], None, 1, "ModuleNotFoundError: blosc2"))
    report = verify_preprocessed(d, PLANS, "3d_fullres", deep=True)
    assert not report.ok and report.deep_error is not None and report.problems == []
    assert report.lines() == ["nnUNetPlans_3d_fullres/ was not read in full: the deep-check subprocess failed "
                              "(exit 1): ModuleNotFoundError: blosc2"]


def test_an_unreadable_dataset_json_or_split_file_is_a_note_here(tmp_path: Path) -> None:
    """`check` reports those files itself; the case check only says what it could not compare."""
    d = dataset(tmp_path, 2)
    (d / "dataset.json").write_text("{")
    (d / "splits_final.json").write_text("[")
    report = verify_preprocessed(d, PLANS, "3d_fullres")
    assert report.ok and report.cases_checked == 2 and len(report.notes) == 2
    assert report.notes[0].startswith("dataset.json is unreadable (")

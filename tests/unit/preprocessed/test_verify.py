"""The preprocessed-data check on cases written by nnU-Net's own code, whole and damaged."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from supervisor.preprocessed.verify import check_cases, frame_problem, verify_preprocessed


def write_case(folder: Path, case: str, shape: tuple[int, ...] = (1, 12, 10, 8)) -> None:
    """A case as nnU-Net 2.8's DefaultPreprocessor saves it (nnUNetDatasetBlosc2.save_case)."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape).astype(np.float32)
    seg = (rng.random(shape) > 0.7).astype(np.int16)
    blocks, chunks = comp_blosc2_params(data.shape, (8, 8, 8), data.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, {"spacing": [1.0, 1.0, 1.0], "class_locations": {1: np.zeros((3, 4))}},
                                  str(folder / case), chunks=chunks, blocks=blocks)


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    folder = tmp_path / "nnUNetPlans_3d_fullres"
    for i in range(3):
        write_case(folder, f"case_{i:03d}")
    return folder


def test_cases_written_by_nnunet_are_whole(cases: Path) -> None:
    report = check_cases(cases, ["case_000", "case_001", "case_002"])
    assert report.cases_checked == 3 and report.problems == []


def test_each_kind_of_damage_is_named_with_its_case(cases: Path) -> None:
    image = cases / "case_000.b2nd"
    whole = image.stat().st_size
    with open(image, "r+b") as f:
        f.truncate(whole // 2)  # a kill mid-write
    (cases / "case_001_seg.b2nd").unlink()  # killed between the image and the label
    (cases / "case_002.pkl").write_bytes(b"\x80\x04garbage")
    report = check_cases(cases, ["case_000", "case_001", "case_002"])
    got = {(p.case, p.file): p.problem for p in report.problems}
    assert got[("case_000", "case_000.b2nd")] == f"is truncated ({whole // 2} of {whole} bytes)"
    assert got[("case_001", "case_001_seg.b2nd")] == "missing"
    assert got[("case_002", "case_002.pkl")].startswith("does not unpickle")
    assert report.damaged_cases == ["case_000", "case_001", "case_002"]
    line = report.lines("Run nnUNetv2_preprocess again.")[0]
    assert line.startswith("preprocessed case case_000 in ") and "truncated" in line and line.endswith("again.")


def test_a_zero_length_file_a_fifo_and_a_foreign_file_never_block(cases: Path) -> None:
    (cases / "case_000.b2nd").write_bytes(b"")
    assert frame_problem(cases / "case_000.b2nd") == "is empty (0 bytes)"
    os.unlink(cases / "case_001.b2nd")
    os.mkfifo(cases / "case_001.b2nd")
    assert frame_problem(cases / "case_001.b2nd") == "is a FIFO (named pipe), not a file"
    (cases / "case_002.b2nd").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert "is not a blosc2 frame" in str(frame_problem(cases / "case_002.b2nd"))


def test_the_expected_cases_come_from_the_splits_and_a_missing_case_is_named(cases: Path) -> None:
    import json

    (cases.parent / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001"],
                                                                 "val": ["case_002", "case_009"]}]))
    plans = {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {"data_identifier":
                                                                            "nnUNetPlans_3d_fullres"}}}
    report = verify_preprocessed(cases.parent, plans, "3d_fullres")
    assert report.cases_checked == 4 and report.damaged_cases == ["case_009"]
    older = cases.parent / "nnUNetPlans_2d"
    older.mkdir()
    np.save(older / "case_000.npy", np.zeros(3))
    plans["configurations"]["2d"] = {"data_identifier": "nnUNetPlans_2d"}
    assert "older nnU-Net" in verify_preprocessed(cases.parent, plans, "2d").unchecked


@pytest.mark.process
def test_the_deep_check_decompresses_and_finds_a_frame_whose_header_survived(cases: Path) -> None:
    plans = {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}
    assert verify_preprocessed(cases.parent, plans, "3d_fullres", deep=True).problems == []
    seg = cases / "case_001_seg.b2nd"
    raw = bytearray(seg.read_bytes())
    raw[-40:] = b"\xff" * 40  # damaged inside, the length intact: only decompressing sees it
    seg.write_bytes(bytes(raw))
    report = verify_preprocessed(cases.parent, plans, "3d_fullres", deep=True)
    assert report.deep and [p.case for p in report.problems] == ["case_001"]
    pickle.dumps(report.problems)  # plain data

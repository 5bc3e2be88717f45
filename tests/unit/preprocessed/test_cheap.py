"""The cheap check of a configuration's folder: intact cases pass, each kind of damage is named with its case, and
nothing blocks or reads without bound."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import blosc2
import numpy as np
import pytest

from supervisor.preprocessed.cheap import (
    CaseProblem,
    FolderCheck,
    check_folder,
    config_value,
    data_identifier,
    read_properties,
)
from tests.unit.preprocessed.cases import (
    IDENT,
    arrays,
    copy_real,
    dataset,
    dataset_dir,
    plans,
    properties,
    save_case,
    truncate,
    write_case,
)


def check(d: Path, ident: str = IDENT) -> FolderCheck:
    ds = json.loads((d / "dataset.json").read_text())
    return check_folder(d / ident, d, channels=len(ds["channel_names"]), dataset_json=ds)


def problems(d: Path) -> dict[tuple[str, str], str]:
    return {(p.case, p.file): p.problem for p in check(d).problems}


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return dataset(tmp_path, 3)


def test_intact_cases_written_by_nnunet_pass(ds: Path) -> None:
    result = check(ds)
    assert result.format == "b2nd" and result.cases == ["case_000", "case_001", "case_002"]
    assert result.problems == [] and result.folder_problems == [] and result.intact() == result.cases


def test_intact_cases_of_every_shape_and_channel_count_pass(tmp_path: Path) -> None:
    d = dataset_dir(tmp_path, n_training=4)
    d.joinpath("dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "numTraining": 4,
                                                      "labels": {"background": 0, "organ": 1, "tumor": 2}}))
    for i, (shape, patch) in enumerate([((2, 20, 18, 14), (16, 16, 16)), ((2, 5, 40, 33), (32, 32)),
                                        ((2, 9, 9, 9), (64, 64, 64)), ((2, 31, 7, 12), (8, 8, 8))]):
        write_case(d / IDENT, f"c{i}", shape, seed=i, patch=patch)
    assert check(d).problems == []


def test_the_real_tiny_dataset_passes(tmp_path: Path) -> None:
    real = copy_real(tmp_path)
    if real is None:
        pytest.skip("no real preprocessed tiny dataset on this machine")
    for ident in ("nnUNetPlans_3d_fullres", "nnUNetPlans_2d"):
        result = check(real, ident)
        assert result.problems == [] and result.folder_problems == [] and len(result.cases) == 10


def test_a_truncated_image_is_named_with_both_lengths(ds: Path) -> None:
    whole = truncate(ds / IDENT / "case_001.b2nd", 4096)
    assert problems(ds) == {("case_001", "case_001.b2nd"): f"is truncated (4096 of {whole} bytes)"}


def test_a_zero_length_file(ds: Path) -> None:
    truncate(ds / IDENT / "case_002_seg.b2nd", 0)
    truncate(ds / IDENT / "case_000.pkl", 0)
    assert problems(ds) == {("case_002", "case_002_seg.b2nd"): "is empty (0 bytes)",
                            ("case_000", "case_000.pkl"): "is empty (0 bytes)"}


def test_a_case_killed_before_its_segmentation_lacks_it_and_its_pickle(ds: Path) -> None:
    """save_case writes the image, the segmentation, then the pickle: a kill between them leaves this."""
    (ds / IDENT / "case_001_seg.b2nd").unlink()
    (ds / IDENT / "case_001.pkl").unlink()
    assert problems(ds) == {
        ("case_001", "case_001_seg.b2nd"): "is missing",
        ("case_001", "case_001.pkl"): "is missing (nnU-Net writes it last: this case's preprocessing did not finish)"}


def test_a_large_image_killed_midway_is_a_consistent_frame_but_the_case_has_no_pickle(tmp_path: Path) -> None:
    """Over 16 MB blosc2 fills an empty frame chunk by chunk: killed inside, the frame is consistent (the chunks
    not written read as zeros), and only the missing segmentation and pickle say the case is unfinished."""
    d = dataset_dir(tmp_path, n_training=1)
    (d / IDENT).mkdir()
    arr = blosc2.empty((1, 64, 64, 64), dtype=np.float32, chunks=(1, 32, 32, 32), blocks=(1, 16, 16, 16),
                       urlpath=str(d / IDENT / "case_000.b2nd"), mode="w")
    arr.schunk.update_data(0, np.ones((1, 32, 32, 32), np.float32), copy=True)
    del arr
    assert set(problems(d)) == {("case_000", "case_000_seg.b2nd"), ("case_000", "case_000.pkl")}


def test_a_garbage_or_cut_pickle(ds: Path) -> None:
    (ds / IDENT / "case_000.pkl").write_bytes(b"\x80\x04garbage")
    whole = (ds / IDENT / "case_001.pkl").read_bytes()
    (ds / IDENT / "case_001.pkl").write_bytes(whole[: len(whole) // 2])
    (ds / IDENT / "case_002.pkl").write_bytes(pickle.dumps(["not", "a", "dict"]))
    got = problems(ds)
    assert got[("case_000", "case_000.pkl")].startswith("does not unpickle (")
    assert got[("case_001", "case_001.pkl")].endswith("cut short or overwritten")
    assert got[("case_002", "case_002.pkl")] == "holds a list, not nnU-Net's properties dict"


def test_a_pickle_without_what_the_trainer_reads(ds: Path) -> None:
    (ds / IDENT / "case_000.pkl").write_bytes(pickle.dumps({"spacing": [1.0, 1.0, 1.0]}))
    assert "lacks class_locations, shape_before_cropping" in problems(ds)[("case_000", "case_000.pkl")]


def test_a_pickle_that_would_run_code_is_read_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"a": Evil()}))
    props, problem = read_properties(tmp_path / "x.pkl")
    assert problem is None and props is not None and not marker.exists()


def test_a_fifo_in_place_of_each_file_never_blocks(ds: Path) -> None:
    for name in ("case_000.b2nd", "case_001_seg.b2nd", "case_002.pkl"):
        (ds / IDENT / name).unlink()
        os.mkfifo(ds / IDENT / name)
    got = problems(ds)
    assert got == {("case_000", "case_000.b2nd"): "is a FIFO (named pipe), not a regular file",
                   ("case_001", "case_001_seg.b2nd"): "is a FIFO (named pipe), not a regular file",
                   ("case_002", "case_002.pkl"): "is a FIFO (named pipe), not a regular file"}


def test_a_2_gb_file_in_place_of_a_pickle_is_a_problem_not_a_read(ds: Path) -> None:
    with open(ds / IDENT / "case_000.pkl", "r+b") as f:
        f.truncate(2 << 30)  # sparse: no disk, and never read
    assert "far larger than a properties pickle" in problems(ds)[("case_000", "case_000.pkl")]


def test_shapes_that_disagree(tmp_path: Path) -> None:
    d = dataset_dir(tmp_path, n_training=2)
    data, seg = arrays((1, 20, 18, 14))
    save_case(d / IDENT, "c0", data, seg[:, :19], properties(data, seg))
    two = np.concatenate([data, data])
    save_case(d / IDENT, "c1", two, seg, properties(two, seg))
    got = problems(d)
    assert got == {("c0", "c0_seg.b2nd"): "is (19, 18, 14), the image c0.b2nd is (20, 18, 14)",
                   ("c1", "c1.b2nd"): "has 2 channel(s), dataset.json names 1"}


def test_cases_come_from_the_folder_the_splits_and_dataset_json(ds: Path) -> None:
    (ds / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001"],
                                                       "val": ["case_002", "case_009"]}]))
    ds_json = json.loads((ds / "dataset.json").read_text())
    ds_json["dataset"] = {f"case_{i:03d}": {} for i in (0, 1, 2, 7)}
    (ds / "dataset.json").write_text(json.dumps(ds_json))
    result = check(ds)
    assert result.cases == ["case_000", "case_001", "case_002", "case_007", "case_009"]
    assert [p.line() for p in result.problems] == [
        "case_009: has no files in nnUNetPlans_3d_fullres/, and splits_final.json trains or validates on it",
        "case_007: has no files in nnUNetPlans_3d_fullres/ (dataset.json lists it)"]


def test_a_stray_pickle_names_its_case(ds: Path) -> None:
    """A case whose image was deleted but not its pickle: nnU-Net no longer lists it; we still name it."""
    (ds / IDENT / "case_002.b2nd").unlink()
    assert problems(ds) == {("case_002", "case_002.b2nd"): "is missing"}


def test_fewer_cases_than_num_training_names_them_from_gt_segmentations(tmp_path: Path) -> None:
    d = dataset(tmp_path, 2)
    ds_json = json.loads((d / "dataset.json").read_text())
    ds_json["numTraining"] = 4
    (d / "dataset.json").write_text(json.dumps(ds_json))
    result = check(d)
    assert result.folder_problems == ["nnUNetPlans_3d_fullres/ holds 2 case(s), dataset.json's numTraining is 4: "
                                      "preprocessing stopped before it wrote the others (gt_segmentations/ does not "
                                      "name them)"] and result.unfinished == result.folder_problems[0]
    (d / "gt_segmentations").mkdir()
    for i in range(4):
        (d / "gt_segmentations" / f"case_{i:03d}.nii.gz").write_bytes(b"")
    assert check(d).problems == [
        CaseProblem("case_002", "", "has no files in nnUNetPlans_3d_fullres/ (gt_segmentations/ has its label)"),
        CaseProblem("case_003", "", "has no files in nnUNetPlans_3d_fullres/ (gt_segmentations/ has its label)")]


def test_a_stray_file_makes_nnunet_refuse_the_folder(ds: Path) -> None:
    (ds / IDENT / "notes.txt").write_text("x")
    assert check(ds).folder_problems == [
        "nnUNetPlans_3d_fullres/ holds files ending in .b2nd, .txt: nnU-Net's infer_dataset_class accepts one ending "
        "besides .pkl and .npy and refuses this folder (move the stray files out)"]


def test_an_empty_folder(tmp_path: Path) -> None:
    d = dataset_dir(tmp_path, n_training=2)
    (d / IDENT).mkdir()
    result = check(d)
    assert result.cases == [] and result.folder_problems[0] == \
        "nnUNetPlans_3d_fullres/ holds no preprocessed case (no .b2nd or .npz file)"


def test_the_older_numpy_format(tmp_path: Path) -> None:
    """nnUNetDatasetNumpy: CASE.npz and CASE.pkl, and the unpacked CASE.npy / CASE_seg.npy it memory-maps."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    d = dataset_dir(tmp_path, n_training=3)
    (d / IDENT).mkdir()
    for i in range(3):
        data, seg = arrays((1, 12, 10, 8), seed=i)
        nnUNetDatasetNumpy.save_case(data, seg, properties(data, seg), str(d / IDENT / f"c{i}"))
        if i == 0:
            np.save(d / IDENT / "c0.npy", data)
            np.save(d / IDENT / "c0_seg.npy", seg)
    assert check(d).format == "npz" and check(d).problems == []
    whole = truncate(d / IDENT / "c0.npy", 200)
    truncate(d / IDENT / "c1.npz", 300)
    got = problems(d)
    assert got[("c0", "c0.npy")] == f"is truncated (200 of {whole} bytes)"
    assert got[("c1", "c1.npz")].startswith("is not a complete .npz (BadZipFile")


def test_the_data_identifier_follows_inheritance() -> None:
    p = plans()
    assert data_identifier(p, "3d_fullres") == IDENT and data_identifier(p, "3d_cascade_fullres") == IDENT
    assert config_value(p, "3d_cascade_fullres", "preprocessor_name") == "DefaultPreprocessor"
    with pytest.raises(ValueError, match="not in the plans"):
        data_identifier(p, "3d_lowres")
    p["configurations"]["loop"] = {"inherits_from": "loop"}
    with pytest.raises(ValueError, match="no data_identifier"):
        data_identifier(p, "loop")

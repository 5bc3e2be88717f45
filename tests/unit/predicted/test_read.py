"""Reading prediction outputs: what nnU-Net's own writer produced passes; a torn file, another image's geometry,
float labels and damaged probabilities fail with a reason in words. The reader runs in-process here, but for the
two tests that start its subprocess through verify_outputs."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from supervisor.predicted import verify
from supervisor.predicted.cases import OutputRequest, OutputVerdict, output_files
from supervisor.predicted.read import check_case, run
from supervisor.predicted.verify import OutputCheckError, verify_outputs
from supervisor.preprocessed.verify import DONE_PREFIX, START_PREFIX

SIZE = (32, 32, 20)  # SimpleITK's x, y, z; the arrays are (20, 32, 32)
SPACING = (0.7813, 0.7813, 2.5)
ORIGIN = (-120.3, 87.25, -401.9)
C, S = math.cos(0.3), math.sin(0.3)
DIRECTION = (C, -S, 0.0, S, C, 0.0, 0.0, 0.0, 1.0)  # not float32-exact: nnU-Net's NIfTI round trip rounds it


def _image(size: tuple[int, ...] = SIZE, dtype: Any = np.float32, spacing: tuple[float, ...] = SPACING,
           origin: tuple[float, ...] = ORIGIN, direction: tuple[float, ...] = DIRECTION) -> sitk.Image:
    values = np.random.default_rng(0).random(tuple(reversed(size))) * 3
    image = sitk.GetImageFromArray(values.astype(dtype))
    image.SetSpacing(spacing[:len(size)])
    image.SetOrigin(origin[:len(size)])
    image.SetDirection(direction if len(size) == 3 else (C, -S, S, C))
    return image


def _case(folder: Path, probabilities: bool = False, size: tuple[int, ...] = SIZE, ending: str = ".nii.gz") -> \
        dict[str, Any]:
    """An input and the outputs nnU-Net's own SimpleITKIO writes for it (export_prediction_from_logits's order)."""
    first = folder / f"case_0000{ending}"
    sitk.WriteImage(_image(size), str(first))
    rw = SimpleITKIO()
    data, props = rw.read_images([str(first)])
    seg = (data[0] > 1.5).astype(np.uint8)  # (1, y, x) for a 2-d image, (z, y, x) for 3-d: what nnU-Net exports
    outputs = output_files(folder, "case", ending, probabilities)
    if probabilities:
        probs = np.stack([1 - seg, seg, np.zeros_like(seg)]).astype(np.float32)
        np.savez_compressed(outputs[0], probabilities=probs)
        outputs[1].write_bytes(pickle.dumps(props))
    rw.write_seg(seg, str(outputs[-1]), props)
    return {"case": "case", "input": [str(first)], "outputs": [str(p) for p in outputs],
            "probabilities": probabilities}


def _seg(entry: dict[str, Any], image: sitk.Image) -> None:
    sitk.WriteImage(image, entry["outputs"][-1], True)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("size", [SIZE, SIZE[:2]])
def test_what_nnunets_writer_wrote_passes(tmp_path: Path, probabilities: bool, size: tuple[int, ...]) -> None:
    assert check_case(_case(tmp_path, probabilities, size)) == (True, "")


def test_a_reorienting_reader_writes_probabilities_in_its_own_axis_order(tmp_path: Path) -> None:
    """NibabelIOWithReorient predicts in RAS and writes the segmentation back in the file's orientation, but not
    the probabilities: with it, the npz's shape is the segmentation's permuted."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    first = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(_image(direction=(0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)), str(first))  # x, z swapped
    rw = NibabelIOWithReorient()
    data, props = rw.read_images([str(first)])
    outputs = output_files(tmp_path, "case", ".nii.gz", True)
    np.savez_compressed(outputs[0], probabilities=np.zeros((2, *data.shape[1:]), np.float32))
    outputs[1].write_bytes(pickle.dumps(props))
    rw.write_seg((data[0] > 1.5).astype(np.uint8), str(outputs[-1]), props)
    entry = {"case": "case", "input": [str(first)], "outputs": [str(p) for p in outputs], "probabilities": True}
    assert check_case(entry, "NibabelIOWithReorient") == (True, "")
    ok, reason = check_case(entry)  # as if SimpleITKIO had written it: the axes must then agree
    assert not ok and reason.startswith("case.npz holds probabilities of shape (2, 32, 32, 20)"), reason


def test_an_input_simpleitk_cannot_read_goes_through_the_plans_reader(tmp_path: Path) -> None:
    """A sheared affine: ITK refuses it, nnU-Net's planning then picks NibabelIO, and so does the check."""
    import nibabel as nib
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    affine = np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])
    image = nib.Nifti1Image(np.random.default_rng(0).random((7, 6, 5)).astype(np.float32), affine)
    image.header.set_qform(None, code=0)
    image.header.set_sform(affine, code=1)
    first, seg = tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz"
    nib.save(image, first)
    rw = NibabelIO()
    data, props = rw.read_images([str(first)])
    rw.write_seg((data[0] > 0.5).astype(np.uint8), str(seg), props)
    entry = {"case": "case", "input": [str(first)], "outputs": [str(seg)], "probabilities": False}
    assert check_case(entry, "NibabelIO") == (True, "")
    seg.write_bytes(seg.read_bytes()[:-30])
    assert check_case(entry, "NibabelIO") == (False, "case.nii.gz is truncated: its gzip stream ends before its "
                                                     "end-of-stream marker")


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_other_simpleitk_formats_pass_and_fail_when_cut(tmp_path: Path, ending: str) -> None:
    entry = _case(tmp_path, ending=ending)
    assert check_case(entry) == (True, "")
    seg = Path(entry["outputs"][-1])
    seg.write_bytes(seg.read_bytes()[:-40])
    ok, reason = check_case(entry)
    assert not ok and reason.startswith(f"case{ending} cannot be read in full ("), reason


def test_a_truncated_nifti_fails_though_simpleitk_reads_it(tmp_path: Path) -> None:
    entry = _case(tmp_path)
    seg = Path(entry["outputs"][-1])
    whole = seg.read_bytes()
    for cut in (whole[:len(whole) // 2], whole[:-4]):  # half of it; only the gzip trailer missing
        seg.write_bytes(cut)
        sitk.ReadImage(str(seg))  # no error: ITK fills the missing voxels with zeros
        assert check_case(entry) == (False, "case.nii.gz is truncated: its gzip stream ends before its "
                                            "end-of-stream marker")
    plain = _case(tmp_path, ending=".nii")
    seg = Path(plain["outputs"][-1])
    seg.write_bytes(seg.read_bytes()[:-100])
    assert check_case(plain) == (False, f"case.nii is truncated: {352 + 20480 - 100} of the {352 + 20480} bytes its "
                                        "NIfTI header declares")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_the_bytes_a_nifti_header_declares(tmp_path: Path, version: int, endian: str) -> None:
    import nibabel as nib

    from supervisor.predicted.read import _nifti_bytes

    image = (nib.Nifti1Image if version == 1 else nib.Nifti2Image)(np.zeros((5, 6, 7), np.int16), np.eye(4))
    header = image.header.as_byteswapped(endian)
    nib.save(type(image)(image.get_fdata().astype(np.int16), np.eye(4), header), tmp_path / "x.nii")
    raw = (tmp_path / "x.nii").read_bytes()
    assert raw[:4] == np.array(348 if version == 1 else 540, endian + "i4").tobytes()
    assert _nifti_bytes(raw[:540]) == len(raw)  # header, extension flags and 5 * 6 * 7 int16 voxels
    assert _nifti_bytes(b"not a NIfTI header" * 40) is None


def test_another_size_spacing_origin_or_direction_fails(tmp_path: Path) -> None:
    entry = _case(tmp_path)
    _seg(entry, _image((32, 32, 24), np.uint8))
    assert check_case(entry) == (False, "case.nii.gz: size (32, 32, 24) differs from the input's (32, 32, 20) "
                                        "(case_0000.nii.gz)")
    _seg(entry, _image(dtype=np.uint8, spacing=(0.7813, 0.7813, 2.5025)))  # a thousandth off
    ok, reason = check_case(entry)
    assert not ok and reason.startswith("case.nii.gz: spacing (0.7813, 0.7813, 2.5025) differs from the input's "
                                        "(0.7813, 0.7813, 2.5)"), reason
    _seg(entry, _image(dtype=np.uint8, origin=(-120.3, 87.25 + 0.7813, -401.9)))  # one voxel
    assert check_case(entry)[1].startswith("case.nii.gz: origin (-120.3, 88.0313, -401.9) differs")
    _seg(entry, _image(dtype=np.uint8, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)))
    assert check_case(entry)[1].startswith("case.nii.gz: direction (1, 0, 0, 0, 1, 0, 0, 0, 1) differs")
    # float32 rounding, which every NIfTI round trip does, is no difference
    _seg(entry, _image(dtype=np.uint8, spacing=tuple(float(np.float32(s) * (1 + 2e-7)) for s in SPACING)))
    assert check_case(entry) == (True, "")


def test_other_endings_go_through_nnunets_reader_writer(tmp_path: Path) -> None:
    """A 2-d PNG: NaturalImage2DIO, as nnU-Net picks it for the ending (or as the plans name it)."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    first = tmp_path / "case_0000.png"
    sitk.WriteImage(sitk.GetImageFromArray((np.arange(32 * 30).reshape(32, 30) % 200).astype(np.uint8)), str(first))
    rw = NaturalImage2DIO()
    data, props = rw.read_images([str(first)])
    outputs = output_files(tmp_path, "case", ".png", True)
    np.savez_compressed(outputs[0], probabilities=np.zeros((2, *data.shape[1:]), np.float32))
    outputs[1].write_bytes(pickle.dumps(props))
    rw.write_seg((data[0] > 100).astype(np.uint8), str(outputs[-1]), props)
    entry = {"case": "case", "input": [str(first)], "outputs": [str(p) for p in outputs], "probabilities": True}
    assert check_case(entry) == (True, "") and check_case(entry, "NaturalImage2DIO") == (True, "")
    ok, reason = check_case(entry, "NoSuchIO")
    assert not ok and reason.startswith("case.png could not be checked (RuntimeError: Unable to find reader writer "
                                        "class 'NoSuchIO'"), reason
    out = io.StringIO()
    with pytest.raises(SystemExit, match=r"^nnU-Net's reader-writer for case\.png cannot be found: RuntimeError: "):
        run({"cases": [entry], "reader": "NoSuchIO"}, out)  # no case's fault: before any case, the check fails
    assert out.getvalue() == ""
    whole = outputs[-1].read_bytes()
    outputs[-1].write_bytes(whole[:len(whole) // 2])
    ok, reason = check_case(entry)
    assert not ok and reason.startswith("case.png cannot be read in full ("), reason
    rw.write_seg(np.zeros((1, 20, 30), np.uint8), str(outputs[-1]), props)
    assert check_case(entry) == (False, "case.png: size (1, 20, 30) differs from the input's (1, 32, 30) "
                                        "(case_0000.png)")


def test_float_labels_fail(tmp_path: Path) -> None:
    entry = _case(tmp_path)
    _seg(entry, _image(dtype=np.float32))
    assert check_case(entry) == (False, "case.nii.gz holds 32-bit float values, not integer labels")


def test_damaged_probabilities_fail(tmp_path: Path) -> None:
    entry = _case(tmp_path, probabilities=True)
    npz, pkl = (Path(p) for p in entry["outputs"][:2])
    whole, props = npz.read_bytes(), pkl.read_bytes()
    npz.write_bytes(whole[:len(whole) // 2])
    assert check_case(entry) == (False, "case.npz is truncated or damaged (BadZipFile: File is not a zip file)")
    raw = bytearray(whole)
    raw[len(raw) // 3] ^= 0xFF  # inside the compressed array: the CRC, or zlib, says so at the end
    npz.write_bytes(bytes(raw))
    ok, reason = check_case(entry)
    assert not ok and reason.startswith("case.npz is truncated or damaged ("), reason
    np.savez_compressed(npz, softmax=np.zeros((3, 20, 32, 32), np.float32))
    assert check_case(entry) == (False, "case.npz has no 'probabilities' (it holds ['softmax.npy'])")
    np.savez_compressed(npz, probabilities=np.zeros((3, 20, 32, 31), np.float32))
    assert check_case(entry) == (False, "case.npz holds probabilities of shape (3, 20, 32, 31), not (classes, "
                                        "*(20, 32, 32)) as the segmentation")
    npz.write_bytes(whole)
    pkl.write_bytes(props[:-10])
    ok, reason = check_case(entry)
    assert not ok and reason.startswith("case.pkl does not unpickle ("), reason
    pkl.write_bytes(pickle.dumps({"nibabel_stuff": io.BytesIO}))  # outside numpy: read inertly, still whole
    assert check_case(entry) == (True, "")
    os.remove(pkl)
    assert check_case(entry) == (False, "case.pkl is missing")


def test_a_missing_or_special_output_is_said_without_reading_it(tmp_path: Path) -> None:
    entry = _case(tmp_path)
    os.remove(entry["outputs"][-1])
    os.mkfifo(entry["outputs"][-1])  # reading it would block forever
    assert check_case(entry) == (False, "case.nii.gz is a FIFO (named pipe), not a file")
    os.remove(entry["outputs"][-1])
    assert check_case(entry) == (False, "case.nii.gz is missing")
    os.remove(entry["input"][0])
    assert check_case(entry) == (False, "the input case_0000.nii.gz is missing")


def test_run_prints_a_start_and_a_done_line_per_case(tmp_path: Path) -> None:
    entry = _case(tmp_path)
    out = io.StringIO()
    answer = run({"cases": [entry, {**entry, "case": "other", "outputs": [str(tmp_path / "other.nii.gz")]}],
                  "reader": None}, out)
    assert answer == {"results": [{"case": "case", "ok": True, "reason": ""},
                                  {"case": "other", "ok": False, "reason": "other.nii.gz is missing"}]}
    lines = out.getvalue().splitlines()
    assert lines[0] == START_PREFIX + "case" and json.loads(lines[1][len(DONE_PREFIX):])["ok"] is True
    assert lines[2] == START_PREFIX + "other" and len(lines) == 4


# ---- the daemon's side ----

def _request(entry: dict[str, Any]) -> OutputRequest:
    return OutputRequest(entry["case"], tuple(map(Path, entry["input"])), tuple(map(Path, entry["outputs"])),
                         entry["probabilities"])


def test_a_case_that_crashes_the_reader_is_not_ok_and_the_rest_are_read(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    reqs = [OutputRequest(c, (tmp_path / f"{c}_0000.nii.gz",), (tmp_path / f"{c}.nii.gz",)) for c in "abcd"]
    runs: list[list[str]] = []

    def fake(request: dict[str, Any], env: Any, timeout_s: float) -> tuple[Any, ...]:
        runs.append([c["case"] for c in request["cases"]])
        if request["cases"][0]["case"] == "a":  # a done, b crashes the reader
            return None, [{"case": "a", "ok": True, "reason": ""}], "b", -11, "Segmentation fault", False
        return {"results": [{"case": c["case"], "ok": True, "reason": ""} for c in request["cases"]]}, [], None, \
            0, "", False

    monkeypatch.setattr(verify, "_run_once", fake)
    verdicts = verify_outputs(reqs, {})
    assert runs == [["a", "b", "c", "d"], ["c", "d"]]
    assert [(v.case, v.ok) for v in verdicts] == [("a", True), ("b", False), ("c", True), ("d", True)]
    assert verdicts[1] == OutputVerdict("b", False, "b's outputs crashed the reader (exit -11: Segmentation "
                                                    "fault): one of them is damaged inside", reqs[1].outputs)
    monkeypatch.setattr(verify, "_run_once", lambda *a: (None, [], None, 1, "ImportError: SimpleITK", False))
    with pytest.raises(OutputCheckError, match="ImportError: SimpleITK"):
        verify_outputs(reqs, {})


@pytest.mark.process
def test_verify_outputs_through_its_subprocess_with_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    good, torn = tmp_path / "good", tmp_path / "torn"
    good.mkdir()
    torn.mkdir()
    entries = [_case(good, probabilities=True), _case(torn)]  # the subprocess's form is taken too
    Path(entries[1]["outputs"][-1]).write_bytes(Path(entries[1]["outputs"][-1]).read_bytes()[:300])
    reqs = [_request(e) for e in entries]
    verdicts = verify_outputs(entries, dict(os.environ), 120, verify.VerdictCache(tmp_path / "verdicts.json"))
    assert [v.ok for v in verdicts] == [True, False] and verdicts[1].files == reqs[1].outputs
    assert verdicts[1].reason == "case.nii.gz is truncated: its gzip stream ends before its end-of-stream marker"
    runs: list[list[str]] = []

    def fake(request: dict[str, Any], env: Any, timeout_s: float) -> tuple[Any, ...]:
        runs.append([c["case"] for c in request["cases"]])
        return {"results": [{"case": "case", "ok": False, "reason": "still torn"}]}, [], None, 0, "", False

    monkeypatch.setattr(verify, "_run_once", fake)
    cache = verify.VerdictCache(tmp_path / "verdicts.json")  # loaded on first use
    assert verify_outputs(reqs, {}, 120, cache) == [verdicts[0], OutputVerdict("case", False, "still torn",
                                                                               reqs[1].outputs)]
    assert runs == [["case"]] and cache.note is None  # only the torn one is read again


@pytest.mark.process
def test_a_check_out_of_time_is_an_error_that_keeps_what_it_found(tmp_path: Path) -> None:
    reqs = [_request(_case(tmp_path))]
    with pytest.raises(OutputCheckError) as caught:
        verify_outputs(reqs, dict(os.environ), 0.001)  # killed long before it reads anything
    assert str(caught.value) == "the output check took more than 0.001 s (0 of 1 cases read)"
    assert caught.value.verdicts == []

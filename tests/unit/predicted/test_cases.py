"""nnU-Net's naming of a prediction's inputs and outputs, and the cache of verdicts: reused while the files stay as
they were, dropped when one changes, and a damaged cache file is an empty cache, never a crash."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import supervisor.predicted as package
from supervisor.predicted.cases import (
    OutputRequest,
    OutputVerdict,
    VerdictCache,
    input_cases,
    output_files,
    segmentation_file,
    signature,
    skipped_by_continue,
)

NAMES = ["case_0000.nii.gz", "case_0001.nii.gz", "b_0000.nii.gz", "._b_0000.nii.gz", "readme.nii.gz",
         "x_000.nii.gz", "y_00000.nii.gz", "c_0000.nii", "d_0000.NII.GZ", "case_1_0000.nii.gz", "case_1_0000x.nii.gz"]


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_bytes(b"x")
    (folder / "e_0000.nii.gz").mkdir()  # not a file: nnU-Net's subfiles skips it
    os.symlink(folder / "gone", folder / "f_0000.nii.gz")  # a broken link: not a file either
    return folder


def test_input_cases_follow_nnunets_naming(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    cases, ignored = input_cases(folder, ".nii.gz")
    assert cases == {"case": [folder / "case_0000.nii.gz", folder / "case_0001.nii.gz"],
                     "b": [folder / "b_0000.nii.gz"], "._b": [folder / "._b_0000.nii.gz"],
                     "case_1": [folder / "case_1_0000.nii.gz"]}
    assert ignored == [folder / n for n in ("case_1_0000x.nii.gz", "readme.nii.gz",
                                                                      "x_000.nii.gz", "y_00000.nii.gz")]
    assert input_cases(folder, ".nii") == ({"c": [folder / "c_0000.nii"]}, [])


def test_input_cases_agree_with_nnunet_itself(tmp_path: Path) -> None:
    """nnU-Net's own functions (create_lists_from_splitted_dataset_folder without its process pool)."""
    from batchgenerators.utilities.file_and_folder_operations import subfiles
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    folder = _folder(tmp_path)
    files = subfiles(str(folder), suffix=".nii.gz", join=False, sort=True)
    theirs = {str(i): create_paths_fn(str(folder), files, ".nii.gz", i)
              for i in get_identifiers_from_splitted_dataset_folder(str(folder), ".nii.gz")}
    ours = {case: [str(p) for p in paths] for case, paths in input_cases(folder, ".nii.gz")[0].items()}
    # nnU-Net also makes a case of each ignored file, with no channels (on which nnUNetv2_predict fails)
    assert ours == {case: paths for case, paths in theirs.items() if paths}
    assert {c for c, paths in theirs.items() if not paths} == {"r", "", "y_", "case_1_"}


def test_output_files_are_what_export_prediction_writes(tmp_path: Path) -> None:
    assert output_files(tmp_path, "case", ".nii.gz", False) == [tmp_path / "case.nii.gz"]
    assert output_files(tmp_path, "case", ".nii.gz", True) == [tmp_path / n for n in  # the segmentation last
                                                                ("case.npz", "case.pkl", "case.nii.gz")]
    assert segmentation_file(tmp_path, "case", ".nii.gz") == tmp_path / "case.nii.gz"
    assert output_files(tmp_path, "c", ".tif", False, reader="Tiff3DIO") == [tmp_path / "c.tif", tmp_path / "c.json"]
    assert output_files(tmp_path, "c", ".tiff", False) == [tmp_path / "c.tiff", tmp_path / "c.json"]
    assert output_files(tmp_path, "c", ".tif", False) == [tmp_path / "c.tif"]  # NaturalImage2DIO: no sidecar


def test_skipped_by_continue_is_nnunets_test(tmp_path: Path) -> None:
    assert not skipped_by_continue(tmp_path, "case", ".nii.gz", False)
    (tmp_path / "case.nii.gz").write_bytes(b"")  # even empty: nnU-Net only asks whether it exists
    assert skipped_by_continue(tmp_path, "case", ".nii.gz", False)
    assert not skipped_by_continue(tmp_path, "case", ".nii.gz", True)
    (tmp_path / "case.npz").write_bytes(b"")
    assert skipped_by_continue(tmp_path, "case", ".nii.gz", True)  # the .pkl is not asked for


# ---- the cache ----

def _request(tmp_path: Path) -> OutputRequest:
    (tmp_path / "case_0000.nii.gz").write_bytes(b"input")
    (tmp_path / "case.nii.gz").write_bytes(b"output")
    return OutputRequest("case", (tmp_path / "case_0000.nii.gz",), (tmp_path / "case.nii.gz",))


def _ok(req: OutputRequest) -> OutputVerdict:
    return OutputVerdict(req.case, True, "", req.outputs)


def test_an_ok_verdict_is_reused_from_the_saved_file(tmp_path: Path) -> None:
    req = _request(tmp_path)
    cache = VerdictCache(tmp_path / "cache.json").load()
    assert cache.get(req) is None and cache.note is None  # no file yet: empty, nothing to say
    cache.put(req, _ok(req), signature(req))
    assert cache.save() is None and cache.save() is None  # the second: nothing new, nothing written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    again = VerdictCache(tmp_path / "cache.json").load()
    assert again.get(req) == _ok(req)


def test_a_changed_size_or_mtime_or_input_drops_the_verdict(tmp_path: Path) -> None:
    req = _request(tmp_path)
    cache = VerdictCache(tmp_path / "cache.json")
    cache.put(req, _ok(req), signature(req))
    st = os.stat(req.outputs[0])
    os.utime(req.outputs[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache.get(req) is None
    os.utime(req.outputs[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.get(req) == _ok(req)
    req.outputs[0].write_bytes(b"output, torn")
    os.utime(req.outputs[0], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, other size
    assert cache.get(req) is None
    req = _request(tmp_path)
    cache.put(req, _ok(req), signature(req))
    req.inputs[0].write_bytes(b"another input")
    assert cache.get(req) is None
    req.outputs[0].unlink()
    assert cache.get(req) is None and signature(req) is None


def test_only_ok_verdicts_of_unchanged_files_are_kept(tmp_path: Path) -> None:
    req = _request(tmp_path)
    cache = VerdictCache(tmp_path / "cache.json")
    cache.put(req, OutputVerdict("case", False, "case.nii.gz is truncated", req.outputs), signature(req))
    assert cache.get(req) is None
    before = signature(req)
    req.outputs[0].write_bytes(b"rewritten while it was read")
    cache.put(req, _ok(req), before)
    assert cache.get(req) is None and cache.save() is None and not (tmp_path / "cache.json").exists()


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[]", b'{"version": 99, "entries": {}}',
                                     b'{"version": 1, "entries": {"a": [["p", "size", 1]]}}', b""])
def test_a_damaged_cache_file_is_an_empty_cache(tmp_path: Path, content: bytes) -> None:
    req = _request(tmp_path)
    (tmp_path / "cache.json").write_bytes(content)
    cache = VerdictCache(tmp_path / "cache.json").load()
    assert cache.get(req) is None and cache.note is not None and str(tmp_path / "cache.json") in cache.note
    cache.put(req, _ok(req), signature(req))
    assert cache.save() is None and VerdictCache(tmp_path / "cache.json").load().get(req) == _ok(req)


def test_a_cache_path_that_is_no_file_is_said_not_raised(tmp_path: Path) -> None:
    req = _request(tmp_path)
    (tmp_path / "cache.json").mkdir()
    cache = VerdictCache(tmp_path / "cache.json").load()
    assert cache.note is not None and "a directory" in cache.note
    cache.put(req, _ok(req), signature(req))
    problem = cache.save()
    assert problem is not None and problem.startswith(f"the verdict cache {tmp_path / 'cache.json'} could not be "
                                                      "written")


def test_nothing_the_daemon_imports_here_imports_numpy_or_the_reader() -> None:
    forbidden = {"numpy", "SimpleITK", "nibabel", "torch", "nnunetv2", "supervisor.predicted.read"}
    folder = Path(package.__file__).parent
    for name in ("__init__.py", "cases.py", "verify.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m in forbidden or m.split(".")[0] in forbidden}, name

"""The cheap check of one configuration's preprocessed data, per training case, in plain Python (no numpy, blosc2
or torch: `check` and the daemon import this): which cases there must be, every file of each present and a
regular file, each `.b2nd` an intact blosc2 frame (frame.py), each `.pkl` a properties dict (unpickled inertly),
and the data and segmentation of a case the same size.

What nnU-Net 2.8 writes (preprocessing/preprocessors/default_preprocessor.py, run_case_save ->
training/dataloading/nnunet_dataset.py, nnUNetDatasetBlosc2.save_case), per case, into
`<nnUNet_preprocessed>/<DatasetXXX_Name>/<data_identifier>/`, in this order:
`CASE.b2nd` (float32 (c, x, y, z)), `CASE_seg.b2nd` (int16 (1, x, y, z)), then `CASE.pkl` (the properties).
The pickle comes last, so a case whose preprocessing was killed lacks it (or has a cut one): that, not the frame
check, is what names the cases a killed nnUNetv2_preprocess left behind. blosc2 writes an array of 16 MB or more
into a frame it fills with zero chunks first and then updates chunk by chunk, header and trailer each time, so a
write killed midway leaves a frame that is consistent and reads as zeros where it stopped (verified by killing
writers): only the missing pickle gives such a case away. A truncated or cut copy (rsync, a full disk) is what the
frame check catches. Older nnU-Net v2 wrote `CASE.npz` (+ `CASE.pkl`, and unpacked `CASE.npy`/`CASE_seg.npy`);
2.8 still reads those (nnUNetDatasetNumpy), so they are checked too.

A killed preprocessing cannot resume: DefaultPreprocessor.run deletes the configuration's folder first
(shutil.rmtree) and writes every case again, and blosc2.asarray refuses to write over an existing .b2nd anyway
("Error while creating the NDArray", verified). So the remedy is always the whole configuration again.

nnU-Net's training cases are the identifiers its dataset class lists from this folder (get_identifiers), split by
`splits_final.json` next to it; dataset.json's `numTraining` is how many there must be.
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.checkpoints.meta import InertUnpickler
from supervisor.fileread import FileKindError, kind_of, open_regular, read_bytes
from supervisor.preprocessed.frame import FrameError, FrameInfo, read_frame

B2ND = "b2nd"
NPZ = "npz"
# The properties nnU-Net's trainer reads: the data loader ('class_locations') and the export of the validation
# (inference/export_prediction.py).
REQUIRED_PROPERTIES = ("class_locations", "spacing", "shape_before_cropping", "bbox_used_for_cropping",
                       "shape_after_cropping_and_before_resampling")
PKL_LIMIT = 512 << 20  # 10,000 sampled voxels a class; even a few hundred classes stay far below this
JSON_LIMIT = 64 << 20  # splits_final.json, dataset.json
NPY_HEADER_LIMIT = 1 << 16
_SIMPLE_DTYPE = re.compile(r"^[<>|=]?[biufcmM](\d+)$")


@dataclass(frozen=True)
class CaseProblem:
    """One damaged or missing file of one training case."""

    case: str
    file: str  # the file's name in the configuration's folder ("" when the case has none at all)
    problem: str  # in words, after the file's name: "is truncated (4096 of 18231 bytes)"

    def line(self) -> str:
        return f"{self.case}: {self.file} {self.problem}" if self.file else f"{self.case}: {self.problem}"


@dataclass
class FolderCheck:
    """The cheap check's answer for one configuration's folder."""

    folder: Path
    format: str | None  # "b2nd", "npz" or None (nothing nnU-Net can read)
    cases: list[str] = field(default_factory=list)  # every case checked, sorted
    problems: list[CaseProblem] = field(default_factory=list)
    folder_problems: list[str] = field(default_factory=list)
    unfinished: str | None = None  # the folder problem only preprocessing again cures: cases it never wrote
    notes: list[str] = field(default_factory=list)  # what could not be compared (the caller reports the file itself)

    def damaged(self) -> set[str]:
        return {p.case for p in self.problems}

    def intact(self) -> list[str]:
        """The cases without a problem: what a deeper read is worth spending on."""
        bad = self.damaged()
        return [c for c in self.cases if c not in bad]


def config_value(plans: Mapping[str, Any], configuration: str, key: str) -> Any:
    """A configuration's setting, following `inherits_from` as nnU-Net's PlansManager does (a 3d_cascade_fullres
    has 3d_fullres's data_identifier); None when no configuration in the chain sets it."""
    configs = plans.get("configurations")
    seen: list[str] = []
    name: Any = configuration
    while isinstance(configs, Mapping) and isinstance(name, str) and name not in seen:
        config = configs.get(name)
        if not isinstance(config, Mapping):
            return None
        if key in config:
            return config[key]
        seen.append(name)
        name = config.get("inherits_from")
    return None


def data_identifier(plans: Mapping[str, Any], configuration: str) -> str:
    """The folder name of a configuration's data; ValueError when the plans do not say."""
    configs = plans.get("configurations")
    if not isinstance(configs, Mapping) or configuration not in configs:
        raise ValueError(f"configuration {configuration!r} is not in the plans")
    ident = config_value(plans, configuration, "data_identifier")
    if not isinstance(ident, str) or not ident or "/" in ident:
        raise ValueError(f"configuration {configuration!r} has no data_identifier in the plans")
    return ident


def infer_format(names: list[str], folder: Path) -> tuple[str | None, str | None]:
    """nnU-Net's infer_dataset_class: the endings of the folder's regular files, less pkl and npy, must be exactly
    one, b2nd or npz; returns (format, problem)."""
    endings = {n.split(".")[-1] for n in names if kind_of(folder / n) is None} - {"pkl", "npy"}
    fmt = B2ND if B2ND in endings else NPZ if NPZ in endings else None
    if not endings:
        return None, "holds no preprocessed case (no .b2nd or .npz file)"
    if len(endings) > 1:
        others = ", ".join(f".{e}" for e in sorted(endings))
        return fmt, (f"holds files ending in {others}: nnU-Net's infer_dataset_class accepts one ending besides "
                     ".pkl and .npy and refuses this folder (move the stray files out)")
    if fmt is None:
        return None, f"holds .{endings.pop()} files, which nnU-Net 2.8 cannot read as a dataset"
    return fmt, None


def _stems(names: list[str], fmt: str | None) -> set[str]:
    """Every case some file in the folder belongs to, the ones nnU-Net lists and those only a stray file names."""
    out: set[str] = set()
    for n in names:
        if n.endswith("_seg.b2nd"):
            out.add(n[:-9])
        elif n.endswith(".b2nd") or n.endswith(".pkl"):
            out.add(n.rsplit(".", 1)[0])
        elif fmt == NPZ and n.endswith("_seg.npy"):
            out.add(n[:-8])
        elif fmt == NPZ and (n.endswith(".npz") or n.endswith(".npy")):
            out.add(n[:-4])
    return out


def load_json(path: Path) -> tuple[Any, str | None]:
    """(content, None), (None, None) when the file is absent, or (None, problem)."""
    kind = kind_of(path)
    if kind == "missing":
        return None, None
    try:
        return json.loads(read_bytes(path, JSON_LIMIT, "JSON file")), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} is unreadable ({exc})"


def split_cases(dataset_dir: Path) -> tuple[set[str], str | None]:
    """Every case splits_final.json names, in any fold (the trainer loads exactly those)."""
    splits, problem = load_json(dataset_dir / "splits_final.json")
    if problem or splits is None:
        return set(), problem
    if not isinstance(splits, list) or not all(isinstance(s, dict) for s in splits):
        return set(), "splits_final.json is not a list of {'train': [...], 'val': [...]}: nnU-Net cannot use it"
    return {str(c) for s in splits for key in ("train", "val") if isinstance(s.get(key), list) for c in s[key]}, None


def check_folder(folder: Path, dataset_dir: Path, channels: int | None = None,
                 dataset_json: Mapping[str, Any] | None = None) -> FolderCheck:
    """Check every training case of one configuration's folder; never blocks, reads little of each file.

    channels: how many input channels the data must have (dataset.json's channel_names), None not to check."""
    names = sorted(os.listdir(folder))
    fmt, problem = infer_format(names, folder)
    result = FolderCheck(folder=folder, format=fmt)
    if problem:
        result.folder_problems.append(f"{folder.name}/ {problem}")
    present = _stems(names, fmt)
    listed, split_problem = split_cases(dataset_dir)
    if split_problem:  # `check` reports the file itself; here it only means its cases were not compared
        result.notes.append(f"{split_problem}: the cases it names were not compared with the folder")
    for case in sorted(listed - present):  # the trainer would stop at the first of these, days in
        result.problems.append(CaseProblem(case, "", f"has no files in {folder.name}/, and splits_final.json "
                                                     "trains or validates on it"))
    explicit = dataset_json.get("dataset") if dataset_json else None
    named = set(map(str, explicit)) if isinstance(explicit, Mapping) else set()  # dataset.json may list its cases
    for case in sorted(named - present - listed):
        result.problems.append(CaseProblem(case, "", f"has no files in {folder.name}/ (dataset.json lists it)"))
    _count(result, present | listed | named, dataset_dir, dataset_json)
    for case in sorted(present):
        check = check_npz_case if fmt == NPZ else check_b2nd_case
        result.problems.extend(check(folder, case, channels))
    result.cases = sorted(present | listed | named | {p.case for p in result.problems})
    return result


def _count(result: FolderCheck, cases: set[str], dataset_dir: Path, dataset_json: Mapping[str, Any] | None) -> None:
    """Fewer cases than dataset.json's numTraining: preprocessing stopped before it reached the others (nnU-Net's
    own verify_dataset_integrity requires the two to agree). gt_segmentations/ names them when it is there."""
    expected = dataset_json.get("numTraining") if dataset_json else None
    if not isinstance(expected, int) or isinstance(expected, bool) or len(cases) >= expected:
        return
    ending = dataset_json.get("file_ending") if dataset_json else None
    gt = dataset_dir / "gt_segmentations"
    named: list[str] = []
    if isinstance(ending, str) and ending and kind_of(gt) == "a directory":
        named = sorted(n[:-len(ending)] for n in os.listdir(gt) if n.endswith(ending) and n[:-len(ending)] not in cases)
    for case in named:
        result.problems.append(CaseProblem(case, "", f"has no files in {result.folder.name}/ (gt_segmentations/ "
                                                     "has its label)"))
    result.unfinished = (
        f"{result.folder.name}/ holds {len(cases)} case(s), dataset.json's numTraining is {expected}: preprocessing "
        "stopped before it wrote the others" + ("" if named else " (gt_segmentations/ does not name them)"))
    result.folder_problems.append(result.unfinished)


def _open_checked(folder: Path, name: str, case: str, problems: list[CaseProblem]) -> int | None:
    """The file's size if it is a regular file; else a problem (missing, a FIFO, a directory) and None."""
    kind = kind_of(folder / name)
    if kind is None:
        return os.stat(folder / name).st_size
    problems.append(CaseProblem(case, name, "is missing" if kind == "missing" else f"is {kind}, not a regular file"))
    return None


def _frame(folder: Path, name: str, case: str, problems: list[CaseProblem]) -> FrameInfo | None:
    if _open_checked(folder, name, case, problems) is None:
        return None
    try:
        with open_regular(folder / name) as f:
            return read_frame(f, os.fstat(f.fileno()).st_size)
    except FrameError as exc:
        problems.append(CaseProblem(case, name, str(exc)))
    except (OSError, IndexError, struct.error) as exc:  # IndexError/struct.error: a file shrinking as we read it
        problems.append(CaseProblem(case, name, f"cannot be read ({exc})"))
    return None


def read_properties(path: Path) -> tuple[dict[Any, Any] | None, str | None]:
    """The properties pickle, unpickled with the inert unpickler (no code runs): (dict, None) or (None, problem)."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            return None, "is empty (0 bytes)"
        if size > PKL_LIMIT:  # checked before reading: a 2 GB file here is a problem, not a minute of reading
            return None, f"is {size} bytes, far larger than a properties pickle (at most {PKL_LIMIT})"
        obj = InertUnpickler(io.BytesIO(read_bytes(path, PKL_LIMIT, "properties pickle"))).load()
    except FileKindError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except OSError as exc:
        return None, f"cannot be read ({exc})"
    except Exception as exc:  # a cut pickle ends in EOFError, UnpicklingError, ...: all mean "unreadable"
        return None, f"does not unpickle ({type(exc).__name__}: {str(exc)[:120]}): cut short or overwritten"
    if not isinstance(obj, dict):
        return None, f"holds a {type(obj).__name__}, not nnU-Net's properties dict"
    return obj, None


def _pkl(folder: Path, case: str, ndim: int | None, problems: list[CaseProblem]) -> None:
    name = f"{case}.pkl"
    kind = kind_of(folder / name)
    if kind == "missing":
        # save_case writes the pickle after both arrays: without it, this case's preprocessing did not finish
        problems.append(CaseProblem(case, name, "is missing (nnU-Net writes it last: this case's preprocessing "
                                                "did not finish)"))
        return
    if kind is not None:
        problems.append(CaseProblem(case, name, f"is {kind}, not a regular file"))
        return
    props, problem = read_properties(folder / name)
    if problem:
        problems.append(CaseProblem(case, name, problem))
        return
    assert props is not None
    missing = [k for k in REQUIRED_PROPERTIES if k not in props]
    if missing:
        problems.append(CaseProblem(case, name, f"lacks {', '.join(missing)}, which nnU-Net's trainer reads"))
    shape = props.get("shape_after_cropping_and_before_resampling")
    if ndim is not None and isinstance(shape, (list, tuple)) and len(shape) != ndim - 1:
        problems.append(CaseProblem(case, name, f"records a {len(shape)}-d image, the data is {ndim - 1}-d"))


def _shapes(case: str, data_name: str, data: tuple[int, ...] | None, seg_name: str, seg: tuple[int, ...] | None,
            channels: int | None, problems: list[CaseProblem]) -> None:
    """nnU-Net's data is (c, x, y, z), its segmentation (1, x, y, z), the same x, y, z."""
    if data is not None and len(data) != 4:
        problems.append(CaseProblem(case, data_name, f"holds a {len(data)}-d array {data}, not (c, x, y, z)"))
        return
    if data is not None and channels is not None and data[0] != channels:
        problems.append(CaseProblem(case, data_name, f"has {data[0]} channel(s), dataset.json names {channels}"))
    if seg is not None and (len(seg) != 4 or seg[0] != 1):
        problems.append(CaseProblem(case, seg_name, f"holds an array of shape {seg}, not (1, x, y, z)"))
    elif data is not None and seg is not None and data[1:] != seg[1:]:
        problems.append(CaseProblem(case, seg_name, f"is {seg[1:]}, the image {data_name} is {data[1:]}"))


def check_b2nd_case(folder: Path, case: str, channels: int | None = None) -> list[CaseProblem]:
    """CASE.b2nd, CASE_seg.b2nd and CASE.pkl of one case."""
    problems: list[CaseProblem] = []
    data = _frame(folder, f"{case}.b2nd", case, problems)
    seg = _frame(folder, f"{case}_seg.b2nd", case, problems)
    _shapes(case, f"{case}.b2nd", data.shape if data else None, f"{case}_seg.b2nd", seg.shape if seg else None,
            channels, problems)
    _pkl(folder, case, len(data.shape) if data else None, problems)
    return problems


def npy_header(head: bytes) -> tuple[tuple[int, ...], str, int]:
    """(shape, dtype str, header length) of a .npy file's start (numpy's format 1.0 to 3.0); ValueError if none."""
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        raise ValueError("no .npy magic at its start")
    major = head[6]
    if major == 1:
        start, hlen = 10, struct.unpack_from("<H", head, 8)[0]
    elif major in (2, 3) and len(head) >= 12:
        start, hlen = 12, struct.unpack_from("<I", head, 8)[0]
    else:
        raise ValueError(f"unknown .npy format version {major}")
    if start + hlen > len(head):
        raise ValueError("its header is cut short")
    meta = ast.literal_eval(head[start:start + hlen].decode("latin-1"))
    if not isinstance(meta, dict) or not isinstance(meta.get("shape"), tuple):
        raise ValueError("its header is not numpy's {'descr', 'fortran_order', 'shape'}")
    return tuple(int(x) for x in meta["shape"]), str(meta.get("descr")), start + hlen


def _npy_file(folder: Path, name: str, case: str, problems: list[CaseProblem]) -> tuple[int, ...] | None:
    """An unpacked .npy (nnU-Net memory-maps it): its header, and its size against shape x itemsize."""
    try:
        with open_regular(folder / name) as f:
            size = os.fstat(f.fileno()).st_size
            shape, dtype, offset = npy_header(f.read(NPY_HEADER_LIMIT))
    except (OSError, ValueError, SyntaxError) as exc:
        problems.append(CaseProblem(case, name, f"is not a readable .npy ({exc})"))
        return None
    simple = _SIMPLE_DTYPE.match(dtype)
    if simple:
        want = offset + math.prod(shape) * int(simple.group(1))
        if size < want:  # what numpy's memmap reports as "mmap length is greater than file size"
            problems.append(CaseProblem(case, name, f"is truncated ({size} of {want} bytes)"))
    return shape


def check_npz_case(folder: Path, case: str, channels: int | None = None) -> list[CaseProblem]:
    """CASE.npz (+ CASE.npy, CASE_seg.npy when unpacked) and CASE.pkl of one case of the older format."""
    problems: list[CaseProblem] = []
    shapes: dict[str, tuple[int, ...] | None] = {"data": None, "seg": None}
    name = f"{case}.npz"
    if _open_checked(folder, name, case, problems) is not None:
        try:
            with open_regular(folder / name) as f, zipfile.ZipFile(f) as zf:
                size = os.fstat(f.fileno()).st_size
                members = {i.filename: i for i in zf.infolist()}
                for key in ("data", "seg"):
                    info = members.get(f"{key}.npy")
                    if info is None:
                        problems.append(CaseProblem(case, name, f"has no {key}.npy member"))
                    elif info.header_offset + info.compress_size > size:
                        problems.append(CaseProblem(case, name, f"is truncated ({key}.npy runs past its end)"))
                    else:
                        with zf.open(info) as member:  # inflates only the first few kB
                            shapes[key] = npy_header(member.read(NPY_HEADER_LIMIT))[0]
        except (OSError, ValueError, SyntaxError, zipfile.BadZipFile, EOFError) as exc:
            problems.append(CaseProblem(case, name, f"is not a complete .npz ({type(exc).__name__}: {exc})"))
    for key, npy in (("data", f"{case}.npy"), ("seg", f"{case}_seg.npy")):
        if kind_of(folder / npy) != "missing":  # unpacked copies are optional; nnU-Net reads them first when there
            shapes[key] = _npy_file(folder, npy, case, problems) or shapes[key]
    _shapes(case, name, shapes["data"], name, shapes["seg"], channels, problems)
    data_shape = shapes["data"]
    _pkl(folder, case, len(data_shape) if data_shape else None, problems)
    return problems

"""The deep check, in a short-lived subprocess (it imports blosc2 and numpy; the supervisor's own process never does):

    python -m supervisor.preprocessed.deep REQUEST.json   ->  one line "NNUNET_SUPERVISE_RESULT {...}"

Each case is opened the way nnU-Net 2.8's dataset opens it (nnUNetDatasetBlosc2.load_case: blosc2.open(urlpath,
mode='r', dparams={'nthreads': 1}, mmap_mode='r'); nnUNetDatasetNumpy: the .npy memory-mapped, else the .npz),
every chunk decompressed, the image's values finite, the segmentation's values labels of dataset.json, and the
properties pickle (loaded with only numpy's array globals allowed) checked against the arrays where nnU-Net's
preprocessing makes them comparable: the size after cropping is the bounding box's, the array's size is what that
size resamples to (compute_new_shape), and every voxel class_locations records lies inside the segmentation and
holds its class.

Before and after each case it prints a line (verify.START_PREFIX, verify.DONE_PREFIX), so that when blosc2 crashes
on a damaged chunk the caller knows which case did it and runs the rest again.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from supervisor.fileread import read_bytes
from supervisor.preprocessed.cheap import B2ND, PKL_LIMIT
from supervisor.preprocessed.verify import DONE_PREFIX, START_PREFIX
from supervisor.trainer.protocol import RESULT_PREFIX

# What nnU-Net's properties pickles hold besides builtins: numpy arrays, scalars and dtypes.
_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1 / numpy 2
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names something besides numpy's arrays: it is not loaded (it could run code)."""


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


def load_properties(path: Path) -> tuple[dict[Any, Any] | None, str | None]:
    """(properties, None), or (None, a note) when the pickle names a global outside numpy's (not loaded, not
    called damaged: the cheap check read it inertly already)."""
    try:
        obj = _NumpyUnpickler(io.BytesIO(read_bytes(path, PKL_LIMIT, "properties pickle"))).load()
    except RefusedGlobal as exc:
        return None, f"{path.name} names {exc}, outside numpy's arrays: its properties were not compared"
    return (obj, None) if isinstance(obj, dict) else (None, None)


def open_array(path: Path) -> Any:
    """The array as nnU-Net's dataset class opens it."""
    if path.suffix == ".b2nd":
        import blosc2

        mmap: dict[str, Any] = {} if os.name == "nt" else {"mmap_mode": "r"}  # nnU-Net: no mmap on Windows
        return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1}, **mmap)
    import numpy as np

    return np.load(path, mmap_mode="r")


def _chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Chunk-aligned pieces of the array: each decompresses exactly one chunk, and memory stays one chunk's."""
    ranges = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(b, min(b + c, s)) for b, c, s in zip(starts, chunks, shape, strict=True))


def _image(arr: Any, name: str, problems: list[dict[str, str]]) -> tuple[int, ...]:
    """Decompress the image piece by piece; its values must be finite."""
    import numpy as np

    shape = tuple(int(s) for s in arr.shape)
    chunks = tuple(int(c) for c in getattr(arr, "chunks", None) or (1, 1, *shape[2:]))
    bad = 0
    for piece in _chunk_slices(shape, chunks):
        values = np.asarray(arr[piece])
        if np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.complexfloating):
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        problems.append({"file": name, "problem": f"holds {bad} NaN or infinite value(s) of {math.prod(shape)}: "
                                                  "training on it gives NaN losses (is the raw image finite?)"})
    return shape


def _properties(props: Mapping[Any, Any], data_shape: tuple[int, ...], seg: Any, case: str, pkl: str,
                expect: Mapping[str, Any], problems: list[dict[str, str]]) -> None:
    """The pickle against the arrays, where nnU-Net's DefaultPreprocessor makes them comparable."""
    import numpy as np

    default = bool(expect.get("default_preprocessor"))
    after_crop = props.get("shape_after_cropping_and_before_resampling")
    bbox = props.get("bbox_used_for_cropping")
    if default and isinstance(after_crop, (list, tuple)) and isinstance(bbox, (list, tuple)) and \
            len(bbox) == len(after_crop) and all(isinstance(b, (list, tuple)) and len(b) == 2 for b in bbox):
        extent = tuple(int(hi) - int(lo) for lo, hi in bbox)  # crop_to_nonzero crops to exactly this box
        if extent != tuple(int(x) for x in after_crop):
            problems.append({"file": pkl,
                             "problem": f"records a crop of {list(after_crop)} but a box of {list(extent)}"})
    spacing, transpose, target = props.get("spacing"), expect.get("transpose_forward"), expect.get("target_spacing")
    if default and isinstance(after_crop, (list, tuple)) and isinstance(spacing, (list, tuple)) and \
            isinstance(transpose, list) and isinstance(target, list) and len(spacing) == len(transpose) == \
            len(after_crop) == len(data_shape) - 1:
        original = [float(spacing[i]) for i in transpose]
        new = [float(x) for x in target]
        if len(new) < len(original):  # 2d: nnU-Net keeps the spacing between slices
            new = [original[0], *new]
        # compute_new_shape, the same float operations: int(round(old_spacing / new_spacing * old_shape))
        want = tuple(round(i / j * k) for i, j, k in zip(original, new, after_crop, strict=False))
        if want != data_shape[1:]:
            problems.append({"file": f"{case}.b2nd" if expect.get("format", B2ND) == B2ND else f"{case}.npz",
                             "problem": f"is {list(data_shape[1:])}, its properties resample to {list(want)}: the "
                                        "array and the pickle come from different preprocessing runs"})
    locations = props.get("class_locations")
    if not isinstance(locations, Mapping):
        return
    seg_shape = np.asarray(seg.shape)
    for key, locs in locations.items():
        coords = np.asarray(locs)
        if coords.size == 0:
            continue
        if coords.ndim != 2 or coords.shape[1] != len(seg_shape) or not np.issubdtype(coords.dtype, np.integer):
            problems.append({"file": pkl, "problem": f"class_locations[{key!r}] is not an (N, {len(seg_shape)}) "
                                                     "array of voxel indices"})
            continue
        if bool((coords < 0).any()) or bool((coords >= seg_shape).any()):
            problems.append({"file": pkl, "problem": f"class_locations[{key!r}] points outside the segmentation "
                                                     f"{tuple(int(s) for s in seg_shape)}"})
            continue
        if default:  # sampled from this very segmentation (before modify_seg_fn, which is a no-op in the default)
            want_labels = list(key) if isinstance(key, tuple) else [key]
            held = seg[tuple(coords.T)]
            wrong = int(np.count_nonzero(~np.isin(held, want_labels)))
            if wrong:
                problems.append({"file": f"{case}_seg.b2nd" if expect.get("format", B2ND) == B2ND else f"{case}.npz",
                                 "problem": f"disagrees with {pkl}: {wrong} of the {len(coords)} voxels its "
                                            f"class_locations records for {key!r} hold other labels (one of the "
                                            "two is damaged)"})


def _segmentation(arr: Any, name: str, expect: Mapping[str, Any], problems: list[dict[str, str]]) -> Any:
    """Decompress the segmentation whole (class_locations index it at random); its values must be labels."""
    import numpy as np

    seg = np.asarray(arr[...])
    labels = expect.get("labels")
    if expect.get("default_preprocessor") and isinstance(labels, list):
        extra = sorted(set(np.unique(seg).tolist()) - set(labels))
        if extra:
            problems.append({"file": name, "problem": f"holds value(s) {extra[:8]} that are no label of "
                                                      "dataset.json: its content is damaged"})
    return seg


def _open_npz_case(folder: Path, case: str) -> tuple[Any, Any]:
    """nnUNetDatasetNumpy.load_case: CASE.npy and CASE_seg.npy memory-mapped when unpacked, else from the npz."""
    import numpy as np

    bundle: Any = None
    arrays = []
    for path, key in ((folder / f"{case}.npy", "data"), (folder / f"{case}_seg.npy", "seg")):
        if path.is_file():
            arrays.append(open_array(path))
        else:
            bundle = np.load(folder / f"{case}.npz") if bundle is None else bundle
            arrays.append(bundle[key])
    return arrays[0], arrays[1]


def check_case(folder: Path, case: str, expect: Mapping[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    """Read one case fully; returns (problems as {file, problem}, notes)."""
    problems: list[dict[str, str]] = []
    notes: list[str] = []
    npz = expect.get("format") == "npz"
    image_name, seg_name = (f"{case}.npz", f"{case}.npz") if npz else (f"{case}.b2nd", f"{case}_seg.b2nd")
    image_arr: Any = None
    seg_arr: Any = None
    try:
        if npz:
            image_arr, seg_arr = _open_npz_case(folder, case)
        else:
            image_arr = open_array(folder / image_name)
    except Exception as exc:  # blosc2 and numpy say "damaged" in many ways; all of them are
        problems.append({"file": image_name, "problem": f"cannot be opened ({type(exc).__name__}: {str(exc)[:200]})"})
    data_shape = None
    if image_arr is not None:
        try:
            data_shape = _image(image_arr, image_name, problems)
        except Exception as exc:
            problems.append({"file": image_name,
                             "problem": f"does not decompress ({type(exc).__name__}: {str(exc)[:200]})"})
    seg = None
    try:
        if not npz:
            seg_arr = open_array(folder / seg_name)
        if seg_arr is not None:
            seg = _segmentation(seg_arr, seg_name, expect, problems)
    except Exception as exc:
        problems.append({"file": seg_name, "problem": f"does not decompress ({type(exc).__name__}: {str(exc)[:200]})"})
    if data_shape is not None and seg is not None and tuple(seg.shape[1:]) != data_shape[1:]:
        problems.append({"file": seg_name, "problem": f"is {list(seg.shape[1:])}, the image is {list(data_shape[1:])}"})
    pkl = f"{case}.pkl"
    try:
        props, note = load_properties(folder / pkl)
    except Exception as exc:  # the cheap check unpickled it already; something changed since
        props, note = None, None
        problems.append({"file": pkl, "problem": f"does not unpickle ({type(exc).__name__}: {str(exc)[:200]})"})
    if note:
        notes.append(note)
    if props is not None and data_shape is not None and seg is not None:
        _properties(props, data_shape, seg, case, pkl, expect, problems)
    return problems, notes


def run(request: Mapping[str, Any], out: Any = sys.stdout) -> dict[str, Any]:
    """Every case of the request, one after the other; prints a start and a done line for each."""
    import blosc2

    blosc2.set_nthreads(1)  # as nnU-Net's dataset does; the check shares the machine with whatever runs
    folder = Path(request["folder"])
    expect = request.get("expect") or {}
    results = []
    for case in request["cases"]:
        print(START_PREFIX + case, file=out, flush=True)
        t0 = time.monotonic()
        problems, notes = check_case(folder, case, expect)
        entry = {"case": case, "problems": problems, "notes": notes, "seconds": round(time.monotonic() - t0, 3)}
        print(DONE_PREFIX + json.dumps(entry), file=out, flush=True)
        results.append(entry)
    return {"results": results}


if __name__ == "__main__":
    req = json.loads(Path(sys.argv[1]).read_text())
    print(RESULT_PREFIX + json.dumps(run(req)), flush=True)

"""Reading prediction outputs, in a short-lived subprocess (it imports SimpleITK and numpy; the supervisor never does):

    python -m supervisor.predicted.read REQUEST.json   ->  one line "NNUNET_SUPERVISE_RESULT {...}"

REQUEST: {"cases": [{"case", "input": [channel files], "outputs": [files], "probabilities": bool}], "reader": the
plans' image_reader_writer or null}. Per case: the segmentation read in full (SimpleITK where it reads the ending,
else nnU-Net's reader-writer), a NIfTI's bytes also counted against its header (ITK reads a cut .nii or .nii.gz
without an error, what it could not read as zeros), its labels integers, its geometry that of the input's first channel
(which nnU-Net copies); with probabilities the npz read to its end (zipfile checks the CRC there), holding
'probabilities' of (classes, *the segmentation's array shape), and the pkl unpickled. Only what a new prediction
cures is checked, never the predicted values. A START and a DONE line around each case name the case a crash hit.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from supervisor.fileread import kind_of, open_regular, read_bytes
from supervisor.preprocessed.cheap import read_properties
from supervisor.preprocessed.deep import load_properties
from supervisor.preprocessed.verify import DONE_PREFIX, START_PREFIX
from supervisor.trainer.protocol import RESULT_PREFIX

SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")
# Readers whose arrays keep the file's axis order; the *WithReorient ones hand out RAS, so the npz is a permutation.
KEEPS_AXES = {None, "SimpleITKIO", "NibabelIO", "NaturalImage2DIO", "Tiff3DIO"}
# nnU-Net copies the input's values, and NIfTI stores them as float32: measured round trips through SimpleITKIO and
# NibabelIO differ by up to 1.1e-7 relative in spacing, 5e-8 in direction, 0 in origin. 1e-5 is 100 times that and
# far below any difference between two scans (the origin is compared relative to its size, or a voxel's).
TOLERANCE = 1e-5
CHUNK = 1 << 20


class Bad(Exception):
    """An output is not what nnU-Net writes; the message, after the file's name, says why."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _sitk() -> Any:
    """SimpleITK, imported here only (its calls are untyped)."""
    import SimpleITK

    return SimpleITK


def _words(exc: BaseException) -> str:
    """An exception in one line: ITK's carry a source location first."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip() and "Exception thrown in SimpleITK" not in s]
    return (f"{type(exc).__name__}: " + " ".join(lines))[:300]


def _drain(f: _Readable) -> tuple[bytes, int]:
    """(the first 540 bytes, the length) of a stream read to its end; gzip checks its CRC and length there."""
    head, total = b"", 0
    while chunk := f.read(CHUNK):
        head += chunk[:540 - len(head)] if len(head) < 540 else b""
        total += len(chunk)
    return head, total


def _nifti_bytes(head: bytes) -> int | None:
    """The bytes a single-file NIfTI-1 or -2 header says the file holds (header and voxels); None for a pair."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack(e + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims, bitpix, offset = struct.unpack(e + "8h", head[40:56]), struct.unpack(e + "h", head[72:74])[0], \
                struct.unpack(e + "f", head[108:112])[0]
            break
        if len(head) >= 540 and struct.unpack(e + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            dims, bitpix, offset = struct.unpack(e + "8q", head[16:80]), struct.unpack(e + "h", head[14:16])[0], \
                struct.unpack(e + "q", head[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or any(d < 1 for d in dims[1:dims[0] + 1]) or bitpix < 1:
        raise Bad("has no valid NIfTI header")
    return int(offset) + int(math.prod(dims[1:dims[0] + 1])) * int(bitpix) // 8


def _check_nifti(path: Path) -> None:
    with open_regular(path) as raw:
        try:
            head, total = _drain(gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw)
        except EOFError:
            raise Bad("is truncated: its gzip stream ends before its end-of-stream marker") from None
        except (OSError, zlib.error) as exc:  # BadGzipFile (an OSError): the CRC or the length is wrong
            raise Bad(f"is damaged: its gzip stream does not decompress ({_words(exc)})") from None
    want = _nifti_bytes(head)
    if want is not None and total < want:
        raise Bad(f"is truncated: {total} of the {want} bytes its NIfTI header declares")


def _geometry(image: Any) -> dict[str, tuple[float, ...]]:
    return {"size": tuple(image.GetSize()), "spacing": image.GetSpacing(), "origin": image.GetOrigin(),
            "direction": image.GetDirection()}


def _differs(name: str, got: tuple[float, ...], want: tuple[float, ...], scale: float) -> bool:
    if len(got) != len(want):
        return True
    if name == "size":
        return got != want
    # origin: relative to the farthest coordinate or a voxel, so that an origin near 0 is compared too
    return any(abs(a - b) > TOLERANCE * (max(abs(a), abs(b), scale) if name != "direction" else 1.0)
               for a, b in zip(got, want, strict=True))


def _fmt(values: tuple[float, ...]) -> str:
    """Seven digits: a difference the tolerance sees shows, a float32 rounding does not."""
    return "(" + ", ".join(f"{x + 0.0:.7g}" for x in values) + ")"  # + 0.0: no "-0"


def _input_header(first: Path) -> dict[str, tuple[float, ...]] | None:
    """The input's geometry from its header alone; None where SimpleITK cannot read it (nnU-Net's reader did)."""
    info = _sitk().ImageFileReader()
    info.SetFileName(str(first))
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return None
    return _geometry(info)


def _with_sitk(seg: Path, first: Path, want: Mapping[str, tuple[float, ...]]) -> tuple[int, ...]:
    """The segmentation against the input's header; returns its array shape as nnU-Net's readers give it."""
    try:
        image = _sitk().ReadImage(str(seg))
    except RuntimeError as exc:
        raise Bad(f"cannot be read in full ({_words(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or "integer" not in image.GetPixelIDTypeAsString():
        raise Bad(f"holds {image.GetPixelIDTypeAsString()} values, not integer labels")
    got = _geometry(image)
    scale = max(abs(s) for s in want["spacing"])
    for name in ("size", "spacing", "origin", "direction"):
        if _differs(name, got[name], want[name], scale):
            g, w = (_fmt(v) for v in (got[name], want[name]))
            raise Bad(f": {name} {g} differs from the input's {w} ({first.name})")
    return (1,) * (3 - int(image.GetDimension())) + tuple(int(s) for s in reversed(image.GetSize()))


_CLASSES: dict[tuple[str | None, str], Any] = {}


def _reader_class(name: str | None, ending: str) -> Any:
    """The reader-writer class as nnU-Net finds it: by name in nnunetv2.imageio (prediction takes the plans'), else
    the first class that lists the ending (nnU-Net's choice without an example file: reading none, it cannot fail
    on a damaged one). Once per name and ending."""
    if (name, ending) not in _CLASSES:
        from nnunetv2.imageio import reader_writer_registry as registry

        _CLASSES[name, ending] = registry.recursive_find_reader_writer_by_name(name) if name else \
            registry.determine_reader_writer_from_file_ending(ending, None, verbose=False)
    return _CLASSES[name, ending]


def _ending(case: str, seg: Path) -> str:
    return seg.name[len(case):] if seg.name.startswith(case) else "".join(seg.suffixes)


def _with_reader(seg: Path, first: Path, reader: Any) -> tuple[int, ...]:
    """The segmentation and the input through nnU-Net's reader-writer: both read in full (2-d images, tifs)."""
    import numpy as np

    rw = reader()
    try:
        arr, props = rw.read_seg(str(seg))
    except Exception as exc:  # each library has its own error for a cut file
        raise Bad(f"cannot be read in full ({_words(exc)})") from None
    if not bool(np.all(np.isfinite(arr))) or not np.array_equal(arr, np.round(arr)):
        raise Bad("holds values that are not integer labels")
    image, in_props = rw.read_images([str(first)])
    if tuple(arr.shape[1:]) != tuple(image.shape[1:]):
        raise Bad(f": size {tuple(arr.shape[1:])} differs from the input's {tuple(image.shape[1:])} ({first.name})")
    got, want = (tuple(float(x) for x in p.get("spacing", ())) for p in (props, in_props))
    if _differs("spacing", got, want, 0.0):
        raise Bad(f": spacing {_fmt(got)} differs from the input's {_fmt(want)} ({first.name})")
    return tuple(int(s) for s in arr.shape[1:])


def _check_npz(path: Path, spatial: tuple[int, ...], keeps_axes: bool) -> None:
    """Stream 'probabilities' to its end (a chunk's memory, not the array's): the CRC is checked there."""
    import numpy as np

    try:
        with open_regular(path) as raw, zipfile.ZipFile(raw) as zf:
            if "probabilities.npy" not in zf.namelist():
                raise Bad(f"has no 'probabilities' (it holds {sorted(zf.namelist())[:5]})")
            with zf.open("probabilities.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise Bad("holds Python objects, not probabilities")
                want = math.prod(shape) * dtype.itemsize
                got = _drain(f)[1]
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error) as exc:  # cut: no directory
        raise Bad(f"is truncated or damaged ({_words(exc)})") from None
    if got != want:
        raise Bad(f"holds {got} of the {want} bytes of its {shape} probabilities")
    matches = tuple(shape[1:]) == spatial if keeps_axes else sorted(shape[1:]) == sorted(spatial)
    if len(shape) != len(spatial) + 1 or shape[0] < 1 or not matches:
        raise Bad(f"holds probabilities of shape {tuple(shape)}, not (classes, *{spatial}) as the segmentation")


def _check_pkl(path: Path) -> None:
    try:
        props, refused = load_properties(path)  # numpy's array globals only, as the deep check loads its pickles
    except Exception as exc:  # a cut pickle ends in EOFError, UnpicklingError, ...
        raise Bad(f"does not unpickle ({_words(exc)})") from None
    if refused:  # something besides numpy's arrays: read inertly instead (no code runs), to its end
        props, problem = read_properties(path)
        if problem:
            raise Bad(problem)
    if props is None:
        raise Bad("does not hold nnU-Net's properties dict")


def _check_sidecar(path: Path) -> None:
    """Tiff3DIO's CASE.json: {"spacing": [...]}, written after the tif."""
    try:
        ok = isinstance(json.loads(read_bytes(path, 1 << 20, "spacing file")).get("spacing"), list)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise Bad("does not hold the spacing Tiff3DIO writes")


def _named(path: Path, message: str) -> str:
    return f"{path.name}{'' if message.startswith(':') else ' '}{message}"


def _segmentation(outputs: list[Path]) -> Path:
    return next((p for p in outputs if p.suffix not in (".npz", ".pkl", ".json")), outputs[0])


def _check_outputs(entry: Mapping[str, Any], reader: str | None, seg: Path, first: Path) -> None:
    """Every check of the case in turn; Bad says which file failed and why."""
    case = str(entry["case"])
    try:
        if seg.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti(seg)  # whichever reader comes next: ITK's does not see a cut NIfTI
        want = _input_header(first) if seg.name.lower().endswith(SITK_ENDINGS) else None
        if want is not None:
            spatial = _with_sitk(seg, first, want)
        else:
            spatial = _with_reader(seg, first, _reader_class(reader, _ending(case, seg)))
    except Bad as exc:
        raise Bad(_named(seg, str(exc))) from None
    for path in map(Path, entry["outputs"]):
        try:
            if path.suffix == ".npz" and entry.get("probabilities"):
                _check_npz(path, spatial, reader in KEEPS_AXES)
            elif path.suffix == ".pkl" and entry.get("probabilities"):
                _check_pkl(path)
            elif path.suffix == ".json" and path != seg:
                _check_sidecar(path)
        except Bad as exc:
            raise Bad(_named(path, str(exc))) from None


def check_case(entry: Mapping[str, Any], reader: str | None = None) -> tuple[bool, str]:
    """(ok, reason) for one case of the request; reason names the file, in words."""
    outputs, inputs = [Path(p) for p in entry["outputs"]], [Path(p) for p in entry["input"]]
    if not inputs or not outputs:
        return False, f"{entry['case']} has no {'input' if not inputs else 'output'} file to check"
    for path in [inputs[0], *outputs]:
        kind = kind_of(path)
        if kind is not None:
            what = "the input " if path == inputs[0] else ""  # nothing a new prediction cures: said as such
            return False, f"{what}{path.name} is {kind}" + ("" if kind == "missing" else ", not a file")
    seg = _segmentation(outputs)
    try:
        _check_outputs(entry, reader, seg, inputs[0])
    except Bad as exc:
        return False, str(exc)
    except Exception as exc:  # nnU-Net's reader-writers assert and raise what they like: still this case's files
        return False, f"{seg.name} could not be checked ({_words(exc)})"
    return True, ""


def _find_readers(request: Mapping[str, Any]) -> None:
    """The reader-writer of every ending SimpleITK does not read, before any case: one nnU-Net cannot find (a
    name not in nnunetv2.imageio, a library missing) is no case's fault, and ends the check outright."""
    for entry in request["cases"]:
        if entry["outputs"]:
            seg = _segmentation([Path(p) for p in entry["outputs"]])
            if not seg.name.lower().endswith(SITK_ENDINGS):
                try:
                    _reader_class(request.get("reader"), _ending(str(entry["case"]), seg))
                except Exception as exc:
                    raise SystemExit(f"nnU-Net's reader-writer for {seg.name} cannot be found: {_words(exc)}") \
                        from None


def run(request: Mapping[str, Any], out: Any = sys.stdout) -> dict[str, Any]:
    """Every case of the request, one after the other; prints a start and a done line for each."""
    _find_readers(request)
    results = []
    for entry in request["cases"]:
        print(START_PREFIX + str(entry["case"]), file=out, flush=True)
        ok, reason = check_case(entry, request.get("reader"))
        results.append({"case": entry["case"], "ok": ok, "reason": reason})
        print(DONE_PREFIX + json.dumps(results[-1]), file=out, flush=True)
    return {"results": results}


if __name__ == "__main__":
    req = json.loads(Path(sys.argv[1]).read_text())
    print(RESULT_PREFIX + json.dumps(run(req)), flush=True)

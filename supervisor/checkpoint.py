"""Read an nnU-Net checkpoint's small fields (epoch, trainer name) without torch and without running its pickle.

torch.save writes a zip whose `*/data.pkl` holds the object tree; tensors are references to other zip
members. We unpickle data.pkl with an Unpickler whose find_class never returns a real callable: every
global becomes an inert placeholder, so a hostile pickle cannot execute anything, and we never read the
tensor payloads, so this costs a few milliseconds even for a large checkpoint.
"""

from __future__ import annotations

import io
import mmap
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import SupervisorError


class CheckpointError(SupervisorError):
    """A checkpoint file cannot be read."""


class _Inert:
    """Stands in for any global the pickle names; accepts whatever it is given and does nothing."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Container opcodes (SETITEMS, APPENDS) and REDUCE on a placeholder, e.g. a defaultdict or a list
    # subclass in a trainer's logging: absorb them so that a benign checkpoint still reads.
    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert(*args)

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self._qualname}>"


class _Mapping(dict):  # type: ignore[type-arg]
    """OrderedDict stand-in; a subclass so that BUILD can attach torch's `_metadata` attribute."""


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.storage_keys: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Mapping
        return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        # torch: ("storage", storage_type, key, location, numel); the key names the member data/<key>
        if isinstance(pid, tuple) and len(pid) > 2 and pid[0] == "storage":
            self.storage_keys.append(str(pid[2]))
        return ("storage", pid)


@dataclass(frozen=True)
class CheckpointMeta:
    """The few fields the daemon needs from a checkpoint."""

    path: Path
    current_epoch: int | None
    trainer_name: str | None
    size: int


def _data_pickle_name(zf: zipfile.ZipFile) -> str:
    names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not names:
        raise CheckpointError("no data.pkl member: not a torch zip checkpoint")
    return names[0]


def read_meta(path: Path) -> CheckpointMeta:
    """Epoch and trainer name of a checkpoint, read without torch; raises CheckpointError with the reason."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError("file is empty (0 bytes)")
        with zipfile.ZipFile(path) as zf:
            obj = _InertUnpickler(io.BytesIO(zf.read(_data_pickle_name(zf)))).load()
    except CheckpointError:
        raise
    except Exception as exc:  # placeholders make odd pickles fail in odd ways; all mean "unreadable"
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"top-level object is {type(obj).__name__}, not a dict")
    epoch = obj.get("current_epoch")
    name = obj.get("trainer_name")
    return CheckpointMeta(
        path=path,
        current_epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        trainer_name=name if isinstance(name, str) else None,
        size=size,
    )


def resume_point(candidates: list[Path]) -> CheckpointMeta | None:
    """The checkpoint nnU-Net's --c will load (the first readable of final, latest, best), or None."""
    for path in candidates:
        try:
            return read_meta(path)
        except CheckpointError:
            continue
    return None


# ---- structure: the zip itself, at close to disk speed, without torch ----

def _crc32_function() -> Callable[[Any, int], int]:
    """ISA-L's crc32 runs at several GB/s; zlib's at about 2 GB/s. Both give the zip's CRC-32."""
    try:
        from isal import isal_zlib

        return isal_zlib.crc32
    except ImportError:  # pragma: no cover - isal is a dependency; this keeps a broken install working
        return zlib.crc32


_crc32 = _crc32_function()
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_CRC_CHUNK = 64 * 1024 * 1024


@dataclass
class StructureReport:
    """The zip-level verdict on one checkpoint file."""

    path: Path
    problems: list[str] = field(default_factory=list)
    members: int = 0
    bytes_checked: int = 0
    epoch: int | None = None
    trainer_name: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _member_crc(mm: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """CRC-32 of a stored member straight from the mapped file (torch never compresses members)."""
    header = _LOCAL_HEADER.unpack_from(mm, info.header_offset)
    if header[0] != b"PK\x03\x04":
        raise ValueError("local header signature missing")
    start = info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]
    end = start + info.compress_size
    if end > len(mm):
        raise ValueError(f"member runs past the end of the file ({end} > {len(mm)} bytes)")
    crc = 0
    view = memoryview(mm)
    try:
        for pos in range(start, end, _CRC_CHUNK):
            crc = _crc32(view[pos:min(end, pos + _CRC_CHUNK)], crc)
    finally:
        view.release()
    return crc


def verify_structure(path: Path) -> StructureReport:
    """Zip central directory readable, every member's CRC right, data.pkl and every tensor storage present.

    Reads every byte once (mmap + CRC-32), never imports torch and never executes the pickle.
    """
    report = StructureReport(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        report.problems.append(f"cannot read: {exc.strerror}")
        return report
    if size == 0:
        report.problems.append("file is empty (0 bytes): the write was interrupted before anything was saved")
        return report
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                report.members = len(infos)
                for info in infos:
                    if info.compress_type != zipfile.ZIP_STORED:
                        got = zlib.crc32(zf.read(info))  # not torch-written; rare, slow path is fine
                    else:
                        got = _member_crc(mm, info)
                    report.bytes_checked += info.file_size
                    if got != info.CRC:
                        report.problems.append(f"member {info.filename}: CRC mismatch (damaged bytes)")
                _check_members(zf, report)
    except zipfile.BadZipFile as exc:
        report.problems.append(f"not a readable zip archive ({exc}): truncated or not a torch checkpoint")
    except (ValueError, struct.error, OSError) as exc:
        report.problems.append(f"zip structure damaged: {exc}")
    return report


def _check_members(zf: zipfile.ZipFile, report: StructureReport) -> None:
    names = set(zf.namelist())
    try:
        pkl = _data_pickle_name(zf)
    except CheckpointError as exc:
        report.problems.append(str(exc))
        return
    prefix = pkl[: -len("data.pkl")]
    unpickler = _InertUnpickler(io.BytesIO(zf.read(pkl)))
    try:
        obj = unpickler.load()
    except Exception as exc:  # a damaged pickle can fail in any way; all mean unreadable
        report.problems.append(f"data.pkl does not unpickle: {type(exc).__name__}: {exc}")
        return
    missing = sorted({k for k in unpickler.storage_keys if f"{prefix}data/{k}" not in names})
    if missing:
        report.problems.append(f"{len(missing)} tensor storage member(s) missing, e.g. {prefix}data/{missing[0]}")
    if isinstance(obj, dict):
        epoch, name = obj.get("current_epoch"), obj.get("trainer_name")
        report.epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
        report.trainer_name = name if isinstance(name, str) else None
    else:
        report.problems.append(f"top-level object is {type(obj).__name__}, not a dict")

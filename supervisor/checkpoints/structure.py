"""A checkpoint's zip, checked at close to disk speed without torch: central directory, every member's CRC-32,
data.pkl and every tensor storage it names. The first level of verification; the daemon runs it itself.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.checkpoints.meta import CheckpointError, InertUnpickler, data_pickle_name
from supervisor.fileread import check_regular


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
    size: int = 0
    crcs: tuple[int, ...] = ()  # every member's CRC-32, as checked against its bytes

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def content_key(self) -> tuple[int, tuple[int, ...]] | None:
        """What identifies these bytes, once checked: the size and the members' CRCs (a copy has the same key)."""
        return (self.size, self.crcs) if self.ok else None


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
            stop = min(end, pos + _CRC_CHUNK)
            crc = _crc32(view[pos:stop], crc)
            _drop(mm, pos, stop)
    finally:
        view.release()
    return crc


def _drop(mm: mmap.mmap, start: int, stop: int) -> None:
    """Let go of the pages just read: the daemon checks checkpoints of hundreds of MB, and every page it touched would
    otherwise count in its resident size until the mapping closes (they stay in the page cache: a later read of the
    file, the trainer's own, is not slowed)."""
    first = start - start % mmap.PAGESIZE
    try:
        mm.madvise(mmap.MADV_DONTNEED, first, stop - first)
    except (AttributeError, OSError, ValueError):
        pass  # no madvise here (not Linux): the pages go when the mapping closes


def verify_structure(path: Path) -> StructureReport:
    """Zip central directory readable, every member's CRC right, data.pkl and every tensor storage present.

    Reads every byte once (mmap + CRC-32), never imports torch and never executes the pickle.
    """
    report = StructureReport(path)
    try:
        check_regular(path, "checkpoint file")  # a FIFO or /dev/zero would block or never end
        size = path.stat().st_size
    except OSError as exc:
        report.problems.append(f"cannot read: {exc.strerror or exc}")
        return report
    if size == 0:
        report.problems.append("file is empty (0 bytes): the write was interrupted before anything was saved")
        return report
    report.size = size
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
                report.crcs = tuple(info.CRC for info in infos)
                _check_members(zf, report)
    except zipfile.BadZipFile as exc:
        report.problems.append(f"not a readable zip archive ({exc}): truncated or not a torch checkpoint")
    except Exception as exc:  # a damaged zip fails in many ways (zipfile raises NotImplementedError for a garbled
        # version field, EOFError, struct.error, ...): each means "damaged", never a crash of the supervisor
        report.problems.append(f"zip structure damaged: {type(exc).__name__}: {exc}")
    return report


def _check_members(zf: zipfile.ZipFile, report: StructureReport) -> None:
    names = set(zf.namelist())
    try:
        pkl = data_pickle_name(zf)
    except CheckpointError as exc:
        report.problems.append(str(exc))
        return
    prefix = pkl[: -len("data.pkl")]
    unpickler = InertUnpickler(io.BytesIO(zf.read(pkl)))
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

"""verify_structure (zip + CRC + members, no torch) on real torch.save checkpoints shaped like nnU-Net's."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from supervisor.checkpoints.structure import StructureReport, verify_structure
from tests.ckpt_fixtures import nnunet_checkpoint, save
from tests.conftest import REPO


def problems_of(path: Path) -> str:
    """The report's problems as one lower-case text; the report must not be ok."""
    report = verify_structure(path)
    assert not report.ok, "a damaged file passed the structural check"
    assert all(p.strip() for p in report.problems)
    return " | ".join(report.problems).lower()


def payload_offset(path: Path, member: str) -> tuple[int, int]:
    """(first byte, size) of a stored zip member's data in the file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    raw = path.read_bytes()
    name_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


# --- an intact checkpoint ---------------------------------------------------------------------------------------


def test_intact_checkpoint_is_ok(good: Path) -> None:
    report = verify_structure(good)

    assert isinstance(report, StructureReport)
    assert report.ok, report.problems
    assert report.problems == []
    assert report.epoch == 7
    assert report.trainer_name == "nnUNetTrainer"
    assert report.path == good


def test_intact_checkpoint_checks_every_member(good: Path) -> None:
    with zipfile.ZipFile(good) as zf:
        infos = zf.infolist()

    report = verify_structure(good)

    assert report.members == len(infos)
    assert report.bytes_checked == sum(i.file_size for i in infos)


def test_bytes_checked_is_close_to_the_file_size(tmp_path: Path) -> None:
    path = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint(features=(32, 64)))  # about 1 MB
    size = path.stat().st_size

    report = verify_structure(path)

    assert report.ok, report.problems
    # every payload byte is read; only zip headers, alignment padding and the central directory are not
    assert 0.95 * size <= report.bytes_checked <= size


def test_custom_trainer_name_and_high_epoch_are_read(tmp_path: Path) -> None:
    path = save(tmp_path / "checkpoint_final.pth", nnunet_checkpoint(1000, "nnUNetTrainer_250epochs"))

    report = verify_structure(path)

    assert report.ok, report.problems
    assert (report.epoch, report.trainer_name) == (1000, "nnUNetTrainer_250epochs")


# --- damaged files ----------------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    path.touch()

    text = problems_of(path)

    assert "empty" in text
    assert "0 bytes" in text
    assert "interrupted" in text


def test_missing_file(tmp_path: Path) -> None:
    text = problems_of(tmp_path / "checkpoint_latest.pth")

    assert "cannot read" in text


@pytest.mark.parametrize("keep", [0.10, 0.50, 0.99, -1], ids=["10%", "50%", "99%", "minus_1_byte"])
def test_truncated_file(good: Path, keep: float) -> None:
    data = good.read_bytes()
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    good.write_bytes(data[:cut])

    text = problems_of(good)

    assert "not a readable zip" in text
    assert "truncated" in text


def test_flipped_byte_in_a_tensor_payload_names_the_member(good: Path) -> None:
    storage = max((m for m in members(good) if re.search(r"/data/\d+$", m)),
                  key=lambda m: payload_offset(good, m)[1])  # the biggest tensor
    start, size = payload_offset(good, storage)
    flip_byte(good, start + size // 2)

    report = verify_structure(good)

    assert not report.ok
    assert len(report.problems) == 1, report.problems
    assert storage in report.problems[0]
    assert "crc mismatch" in report.problems[0].lower()
    assert "damaged" in report.problems[0].lower()
    assert report.epoch == 7  # the pickle itself is intact


def test_flipped_byte_in_data_pkl(good: Path) -> None:
    pkl = next(m for m in members(good) if m.endswith("/data.pkl"))
    start, size = payload_offset(good, pkl)
    flip_byte(good, start + size // 2)

    text = problems_of(good)

    assert f"member {pkl}: crc mismatch".lower() in text


def test_storage_member_removed(good: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "checkpoint_best.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as dst:
        storages = [m for m in src.namelist() if re.search(r"/data/\d+$", m)]
        dropped = storages[len(storages) // 2]
        for info in src.infolist():
            if info.filename != dropped:
                dst.writestr(info, src.read(info))

    text = problems_of(damaged)

    assert "1 tensor storage member(s) missing" in text
    assert dropped.lower() in text


def test_random_bytes_are_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(random.Random(0).randbytes(64 * 1024))

    text = problems_of(path)

    assert "not a readable zip" in text
    assert "not a torch checkpoint" in text


def test_legacy_torch_format_is_not_a_readable_zip(tmp_path: Path) -> None:
    path = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint(), _use_new_zipfile_serialization=False)

    text = problems_of(path)

    assert "not a readable zip" in text


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/data/0", b"\0" * 64)

    text = problems_of(path)

    assert "no data.pkl" in text
    assert "not a torch zip checkpoint" in text


def test_top_level_not_a_dict(tmp_path: Path) -> None:
    path = save(tmp_path / "checkpoint_latest.pth", [torch.zeros(3), 1])

    text = problems_of(path)

    assert "top-level object is list, not a dict" in text


# --- no torch in the daemon -------------------------------------------------------------------------------------


@pytest.mark.process
def test_verify_structure_does_not_import_torch(good: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.checkpoints.structure import verify_structure\n"
        "report = verify_structure(Path(sys.argv[1]))\n"
        "assert report.ok, report.problems\n"
        "assert report.epoch == 7, report\n"
        "assert 'torch' not in sys.modules, 'verify_structure imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(good)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 0, result.stderr

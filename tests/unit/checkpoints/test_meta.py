"""read_meta / resume_point on real torch.save checkpoints shaped like nnU-Net's, damaged ones and hostile ones."""

from __future__ import annotations

import builtins
import collections
import contextlib
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from supervisor.checkpoints.meta import CheckpointError, CheckpointMeta, read_meta, resume_point
from tests.ckpt_fixtures import System, Touch, nnunet_checkpoint, save
from tests.conftest import REPO

# --- a readable checkpoint --------------------------------------------------------------------------------------


def test_reads_epoch_and_trainer_name(good: Path) -> None:
    meta = read_meta(good)

    assert meta == CheckpointMeta(path=good, current_epoch=7, trainer_name="nnUNetTrainer", size=good.stat().st_size)


def test_reads_a_custom_trainer_checkpoint(tmp_path: Path) -> None:
    path = save(tmp_path / "checkpoint_final.pth", nnunet_checkpoint(1000, "nnUNetTrainer_250epochs"))

    meta = read_meta(path)

    assert (meta.current_epoch, meta.trainer_name) == (1000, "nnUNetTrainer_250epochs")


def test_fields_of_the_wrong_type_read_as_unknown(tmp_path: Path) -> None:
    ckpt = nnunet_checkpoint()
    ckpt["current_epoch"] = True
    ckpt["trainer_name"] = 42
    path = save(tmp_path / "odd.pth", ckpt)

    meta = read_meta(path)

    assert (meta.current_epoch, meta.trainer_name) == (None, None)


def test_missing_fields_read_as_unknown(tmp_path: Path) -> None:
    path = save(tmp_path / "weights_only.pth", {"network_weights": nn.Conv3d(1, 1, 1).state_dict()})
    meta = read_meta(path)
    assert (meta.current_epoch, meta.trainer_name) == (None, None)


# --- damaged files ----------------------------------------------------------------------------------------------


def reason(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_meta(path)
    text = str(info.value)
    assert text.strip()
    return text


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    path.touch()
    assert reason(path) == "file is empty (0 bytes)"


def test_truncated_file(good: Path) -> None:
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])

    assert reason(good).startswith("BadZipFile: ")


def test_file_cut_just_before_its_end(good: Path) -> None:
    data = good.read_bytes()
    good.write_bytes(data[:-10])  # the zip's end-of-central-directory record is gone

    assert reason(good).startswith("BadZipFile: ")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(random.Random(0).randbytes(64 * 1024))

    assert reason(path).startswith("BadZipFile: ")


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/data/0", b"\0" * 64)

    assert reason(path) == "no data.pkl member: not a torch zip checkpoint"


def test_zip_with_a_damaged_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x0d\x00\x00")  # a dict cut in its first key

    text = reason(path)
    assert text.split(":")[0] in {"EOFError", "UnpicklingError"}


def test_legacy_non_zip_torch_format_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"current_epoch": 3}, path, _use_new_zipfile_serialization=False)

    assert reason(path).startswith("BadZipFile: ")


def test_top_level_not_a_dict(tmp_path: Path) -> None:
    path = save(tmp_path / "checkpoint_latest.pth", [1, 2, 3])
    assert reason(path) == "top-level object is list, not a dict"


def test_missing_file(tmp_path: Path) -> None:
    assert reason(tmp_path / "checkpoint_latest.pth").startswith("FileNotFoundError: ")


# --- hostile pickles --------------------------------------------------------------------------------------------


class OpenForWriting:
    """Unpickling this calls open(path, "w"), which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.path, "w"))


HOSTILE = [OpenForWriting, Touch, System]


def hostile_checkpoint(path: Path, canary: Path, payload: type) -> Path:
    ckpt = nnunet_checkpoint()
    ckpt["init_args"]["plans"] = payload(canary)  # buried where a real object tree would be
    ckpt["trainer_name"] = payload(canary)
    return save(path, ckpt)


@pytest.mark.parametrize("payload", HOSTILE, ids=lambda p: p.__name__)
def test_hostile_payload_is_live_under_a_real_unpickler(tmp_path: Path, payload: type) -> None:
    """Control: the same file does create the canary when torch.load runs its pickle."""
    canary = tmp_path / "CANARY"
    path = hostile_checkpoint(tmp_path / "checkpoint_latest.pth", canary, payload)

    torch.load(path, weights_only=False)

    assert canary.exists()


@pytest.mark.parametrize("payload", HOSTILE, ids=lambda p: p.__name__)
def test_read_meta_does_not_run_a_hostile_pickle(tmp_path: Path, payload: type) -> None:
    canary = tmp_path / "CANARY"
    path = hostile_checkpoint(tmp_path / "checkpoint_latest.pth", canary, payload)

    # Only the safety property here; what read_meta reports for each payload is tested below.
    with contextlib.suppress(Exception):
        read_meta(path)

    assert not canary.exists()


@pytest.mark.parametrize("payload", [OpenForWriting, System], ids=lambda p: p.__name__)
def test_hostile_payload_becomes_an_inert_stand_in(tmp_path: Path, payload: type) -> None:
    path = hostile_checkpoint(tmp_path / "checkpoint_latest.pth", tmp_path / "CANARY", payload)

    meta = read_meta(path)

    assert meta.current_epoch == 7
    assert meta.trainer_name is None  # the payload is a placeholder, not a str


def test_read_meta_reports_a_getattr_payload_as_checkpoint_error_or_reads_it(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = hostile_checkpoint(tmp_path / "checkpoint_latest.pth", canary, Touch)

    try:
        assert read_meta(path).current_epoch == 7
    except CheckpointError:
        pass
    assert not canary.exists()


class Tags(list):
    """A list subclass, as a custom trainer might keep in its checkpoint."""


@pytest.mark.parametrize("extra", [collections.defaultdict(list, {"dice": [0.5]}), Tags(["a", "b"])],
                         ids=["defaultdict", "list_subclass"])
def test_benign_container_subclasses_do_not_break_read_meta(tmp_path: Path, extra: Any) -> None:
    ckpt = nnunet_checkpoint()
    ckpt["logging"]["extra"] = extra
    path = save(tmp_path / "checkpoint_latest.pth", ckpt)

    assert read_meta(path).current_epoch == 7
    assert resume_point([path]) is not None


def test_hostile_top_level_object(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = save(tmp_path / "checkpoint_latest.pth", OpenForWriting(canary))

    with pytest.raises(CheckpointError, match="not a dict"):
        read_meta(path)

    assert not canary.exists()


# --- resume_point -----------------------------------------------------------------------------------------------


def test_resume_point_takes_the_first_readable_candidate(tmp_path: Path) -> None:
    final = save(tmp_path / "checkpoint_final.pth", nnunet_checkpoint(1000))
    latest = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint(50))
    best = save(tmp_path / "checkpoint_best.pth", nnunet_checkpoint(42))

    meta = resume_point([final, latest, best])

    assert meta is not None
    assert (meta.path, meta.current_epoch) == (final, 1000)


def test_resume_point_skips_a_corrupt_candidate(tmp_path: Path) -> None:
    latest = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint(50))
    latest.write_bytes(latest.read_bytes()[:100])
    best = save(tmp_path / "checkpoint_best.pth", nnunet_checkpoint(42))

    meta = resume_point([tmp_path / "checkpoint_final.pth", latest, best])

    assert meta is not None
    assert (meta.path, meta.current_epoch) == (best, 42)


def test_resume_point_none_when_nothing_is_readable(tmp_path: Path) -> None:
    empty = tmp_path / "checkpoint_latest.pth"
    empty.touch()

    assert resume_point([empty, tmp_path / "checkpoint_best.pth"]) is None
    assert resume_point([]) is None


# --- no torch in the daemon -------------------------------------------------------------------------------------


@pytest.mark.process
def test_read_meta_does_not_import_torch(good: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.checkpoints.meta import read_meta\n"
        f"meta = read_meta(Path({str(good)!r}))\n"
        "assert meta.current_epoch == 7, meta\n"
        "assert 'torch' not in sys.modules, 'read_meta imported torch'\n"
        "assert 'numpy' not in sys.modules, 'read_meta imported numpy'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr

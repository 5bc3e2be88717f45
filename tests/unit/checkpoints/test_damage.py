"""A real checkpoint damaged at random (hypothesis): verification never calls it usable unless what it loads is the
original, and never hangs or raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.checkpoints.meta import CheckpointError, read_meta
from supervisor.checkpoints.probe import check_content
from supervisor.checkpoints.structure import verify_structure
from tests.ckpt_fixtures import nnunet_checkpoint, save

EXPECT = {"trainer_name": "nnUNetTrainer", "configuration": "3d_fullres", "fold": 0}


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    path = save(tmp_path_factory.mktemp("ckpt") / "checkpoint_latest.pth", nnunet_checkpoint())
    return path.read_bytes(), torch.load(path, weights_only=False)


@st.composite
def damaged(draw: st.DrawFn, size: int) -> tuple[str, int, int]:
    how = draw(st.sampled_from(["cut", "flip", "zero", "append"]))
    at = draw(st.integers(0, size - 1))
    return how, at, draw(st.integers(1, 255) if how == "flip" else st.integers(1, 4096))


def apply(raw: bytes, how: str, at: int, n: int) -> bytes:
    if how == "cut":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes([raw[at] ^ n]) + raw[at + 1:]
    if how == "zero":
        return raw[:at] + bytes(min(n, len(raw) - at)) + raw[at + n:]
    return raw + bytes(range(256)) * (n // 256 + 1)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    weights = a["network_weights"].keys() == b["network_weights"].keys() and all(
        torch.equal(a["network_weights"][k], b["network_weights"][k]) for k in a["network_weights"])
    return bool(weights and a["current_epoch"] == b["current_epoch"] and a["trainer_name"] == b["trainer_name"])


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_damage_is_never_called_usable_unless_it_loads_as_the_original(tmp_path: Path, original: tuple[bytes, Any],
                                                                       data: st.DataObject) -> None:
    raw, content = original
    how, at, n = data.draw(damaged(len(raw)))
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(apply(raw, how, at, n))
    report = verify_structure(path)
    try:
        read_meta(path)  # the daemon's torch-free reader: an answer or CheckpointError, nothing else
    except CheckpointError:
        pass
    if not report.ok:
        assert report.problems
        return
    loaded, problems, _ = check_content(str(path), EXPECT)
    if loaded is not None and not problems:  # usable: then it is the original, byte for byte where it matters
        assert same(loaded, content), (how, at, n)


def test_a_garbled_version_needed_field_is_damage_not_a_crash(tmp_path: Path,
                                                             original: tuple[bytes, Any]) -> None:
    # found by the property above: zipfile raises NotImplementedError ("zip file version 6.4") for it
    raw = bytearray(original[0])
    raw[raw.find(b"PK\x01\x02") + 6] = 64  # a central directory entry's "version needed to extract": 6.4
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(bytes(raw))
    report = verify_structure(path)
    assert not report.ok and "NotImplementedError" in report.problems[0]

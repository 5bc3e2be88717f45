"""A relaunch that never waits: the cooperative trainer records each checkpoint it writes (size, zip CRCs, epoch,
step, finite tensors, the launch's verification context), and the supervisor trusts a file that still matches its
record byte for byte without starting a torch probe. Real torch checkpoints in tmp_path; the probe must not run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from supervisor.checkpoints import verify
from supervisor.checkpoints.verify import VerdictCache, context_key, from_record, verify_all
from supervisor.trainer.cooperative import Records, all_finite
from tests.ckpt_fixtures import nnunet_checkpoint, save

EXPECT = {"trainer_name": "nnUNetTrainer", "configuration": "3d_fullres", "fold": 0}


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def probe(candidates: list[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(candidates)
        return {"results": [{"content_problems": [], "epoch": 7, "compatible": None, "missing_keys": [],
                             "unexpected_keys": [], "shape_mismatches": [], "hints": []} for _ in candidates],
                "network_error": None}

    monkeypatch.setattr(verify, "probe", probe)
    return calls


def written(tmp_path: Path, obj: dict[str, Any] | None = None) -> tuple[Path, Path, str]:
    ckpt = save(tmp_path / "checkpoint_latest.pth", obj or nnunet_checkpoint(current_epoch=7))
    context = context_key(EXPECT, None, {})
    assert context is not None
    records = tmp_path / "written.json"
    Records(records, context).note(ckpt, torch.load(ckpt, weights_only=False), True, None)
    return ckpt, records, context


def test_a_checkpoint_that_matches_its_record_needs_no_probe(tmp_path: Path, no_probe: list[list[str]]) -> None:
    ckpt, records, _ = written(tmp_path)
    (v,), err = verify_all([ckpt], EXPECT, None, {}, VerdictCache(), written=records)
    assert v.ok and v.epoch == 7 and err is None and no_probe == []


def test_a_changed_file_or_another_context_is_probed_as_before(tmp_path: Path, no_probe: list[list[str]]) -> None:
    ckpt, records, _ = written(tmp_path)
    other = dict(EXPECT, fold=1)  # the run expects another fold now (a record from another launch)
    verify_all([ckpt], other, None, {}, VerdictCache(), written=records)
    assert no_probe == [[str(ckpt)]]
    save(ckpt, nnunet_checkpoint(current_epoch=8))  # replaced by something the trainer did not record
    verify_all([ckpt], EXPECT, None, {}, VerdictCache(), written=records)
    assert len(no_probe) == 2


def test_a_torn_file_is_damaged_whatever_its_record_says(tmp_path: Path, no_probe: list[list[str]]) -> None:
    ckpt, records, _ = written(tmp_path)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped byte in a member's data: the structural check's CRCs catch it
    ckpt.write_bytes(bytes(data))
    (v,), _ = verify_all([ckpt], EXPECT, None, {}, VerdictCache(), written=records)
    assert not v.ok and no_probe == []


@pytest.mark.parametrize("change", [{"finite": False}, {"epoch": -1}, {"epoch": True}, {"size": 1}, {"crcs": [1]},
                                    {"context": "another"}])
def test_a_record_that_does_not_vouch_is_not_taken(tmp_path: Path, change: dict[str, Any]) -> None:
    ckpt, records, context = written(tmp_path)
    record = json.loads(records.read_text())["checkpoint_latest.pth"]
    from supervisor.checkpoints.structure import verify_structure

    r = verify_structure(ckpt)
    assert from_record(record, r.size, r.crcs, context) is not None
    assert from_record({**record, **change}, r.size, r.crcs, context) is None


def test_a_damaged_records_file_only_costs_a_probe(tmp_path: Path, no_probe: list[list[str]]) -> None:
    ckpt, records, _ = written(tmp_path)
    records.write_text("{torn")
    (v,), _ = verify_all([ckpt], EXPECT, None, {}, VerdictCache(), written=records)
    assert v.ok and no_probe == [[str(ckpt)]]


def test_all_finite_sees_a_nan_anywhere() -> None:
    state = {"network_weights": {"w": torch.ones(3)}, "optimizer_state": {"state": {0: {"m": torch.zeros(2)}}},
             "logging": {"x": [1.0]}}
    assert all_finite(torch, state)
    state["optimizer_state"]["state"][0]["m"][1] = float("nan")
    assert not all_finite(torch, state)
    assert all_finite(torch, {"step": torch.tensor(3)})  # integers are not checked

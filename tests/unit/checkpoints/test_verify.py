"""The verdict cache: a checkpoint probed once is not probed again until its bytes, the network or the
expectations change."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from supervisor.checkpoints import verify
from supervisor.checkpoints.verify import VerdictCache, verify_all
from tests.ckpt_fixtures import nnunet_checkpoint, save

EXPECT = {"trainer_name": "nnUNetTrainer", "configuration": "3d_fullres", "fold": 0}


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Stand in for the probe subprocess; each call's candidates are recorded."""
    calls: list[list[str]] = []

    def fake_probe(candidates: list[str], expect: Mapping[str, Any], network: Mapping[str, Any] | None,
                   env: Mapping[str, str], timeout_s: float = 600, nice: bool = False) -> dict[str, Any]:
        calls.append([Path(c).name for c in candidates])
        return {"network_error": None, "results": [
            {"path": c, "epoch": 7, "content_problems": [], "missing_keys": [], "unexpected_keys": [],
             "shape_mismatches": [], "hints": [], "compatible": True} for c in candidates]}

    monkeypatch.setattr(verify, "probe", fake_probe)
    return calls


@pytest.fixture
def network(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "plans.json").write_text("{}")
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / "trainers").mkdir()
    (tmp_path / "trainers" / "mine.py").write_text("class MyTrainer: pass\n")
    return {"trainer": "MyTrainer", "plans_file": str(tmp_path / "plans.json"),
            "dataset_json": str(tmp_path / "dataset.json"), "configuration": "3d_fullres", "fold": 0, "cache": None}


def test_a_verified_checkpoint_is_not_probed_again_and_its_copy_neither(tmp_path: Path, probes: list[list[str]],
                                                                        network: dict[str, Any]) -> None:
    cache = VerdictCache()
    env = {"nnUNet_extTrainer": str(tmp_path / "trainers")}
    latest = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint())
    (verdict,), _ = verify_all([latest], EXPECT, network, env, cache)
    assert verdict.ok and probes == [["checkpoint_latest.pth"]]
    copy = tmp_path / "snapshot.pth"
    copy.write_bytes(latest.read_bytes())  # a snapshot: same bytes, other name and mtime
    verdicts, _ = verify_all([latest, copy], EXPECT, network, env, cache)
    assert [v.ok for v in verdicts] == [True, True] and [v.epoch for v in verdicts] == [7, 7]
    assert probes == [["checkpoint_latest.pth"]] and cache.hits == 2


def test_new_bytes_an_edited_trainer_or_other_expectations_are_probed_again(tmp_path: Path, probes: list[list[str]],
                                                                           network: dict[str, Any]) -> None:
    cache = VerdictCache()
    env = {"nnUNet_extTrainer": str(tmp_path / "trainers")}
    latest = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint(current_epoch=7))
    verify_all([latest], EXPECT, network, env, cache)
    save(latest, nnunet_checkpoint(current_epoch=8))  # the trainer saved again
    verify_all([latest], EXPECT, network, env, cache)
    (tmp_path / "trainers" / "mine.py").write_text("class MyTrainer: extra_head = 1\n")  # someone edited it
    verify_all([latest], EXPECT, network, env, cache)
    verify_all([latest], {**EXPECT, "fold": 1}, network, env, cache)
    assert len(probes) == 4 and cache.hits == 0


def test_a_damaged_file_is_never_probed_nor_cached(tmp_path: Path, probes: list[list[str]],
                                                   network: dict[str, Any]) -> None:
    cache = VerdictCache()
    cut = tmp_path / "checkpoint_latest.pth"
    good = save(tmp_path / "good.pth", nnunet_checkpoint()).read_bytes()
    cut.write_bytes(good[: len(good) // 2])
    (verdict,), _ = verify_all([cut], EXPECT, network, {}, cache)
    assert not verdict.structure_ok and verdict.damaged and probes == []


def test_a_network_that_could_not_be_built_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         network: dict[str, Any]) -> None:
    calls = []

    def broken(candidates: list[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return {"network_error": "ImportError: no module", "results": [
            {"path": c, "epoch": 7, "content_problems": [], "missing_keys": [], "unexpected_keys": [],
             "shape_mismatches": [], "hints": [], "compatible": None} for c in candidates]}

    monkeypatch.setattr(verify, "probe", broken)
    cache = VerdictCache()
    latest = save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint())
    for _ in range(2):
        _, error = verify_all([latest], EXPECT, network, {}, cache)
        assert error == "ImportError: no module"
    assert len(calls) == 2

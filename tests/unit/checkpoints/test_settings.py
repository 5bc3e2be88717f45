"""What a resume must keep: nnU-Net's debug.json and splits_final.json read, compared with the built trainer's."""

from __future__ import annotations

import json
import os
from pathlib import Path

from supervisor.checkpoints import settings

# The shape of nnU-Net 2.8's debug.json (every attribute as str(); excerpt of a real one from the demo trainer)
DEBUG = {
    "num_epochs": "10", "initial_lr": "0.01", "batch_size": "2", "fold": "0", "weight_decay": "3e-05",
    "configuration_manager": "{'data_identifier': 'nnUNetPlans_3d_fullres', 'preprocessor_name': "
                             "'DefaultPreprocessor', 'batch_size': 2, 'patch_size': [32, 32, 24], "
                             "'median_image_size_in_voxels': [32.0, 32.0, 24.0]}",
    "plans_manager": "{'dataset_name': 'Dataset901_Tiny', 'plans_name': 'nnUNetPlans', 'configurations': {}}",
}


def test_debug_json_gives_the_settings_nnunet_trained_with(tmp_path: Path) -> None:
    path = tmp_path / "debug.json"
    path.write_text(json.dumps(DEBUG))
    assert settings.from_debug(path) == {"num_epochs": "10", "initial_lr": "0.01", "batch_size": "2",
                                         "patch_size": "32x32x24", "plans": "nnUNetPlans"}


def test_a_missing_damaged_or_fifo_debug_json_gives_nothing(tmp_path: Path) -> None:
    assert settings.from_debug(tmp_path / "absent.json") == {}
    (tmp_path / "torn.json").write_text('{"num_epochs": "1')
    assert settings.from_debug(tmp_path / "torn.json") == {}
    os.mkfifo(tmp_path / "fifo.json")
    assert settings.from_debug(tmp_path / "fifo.json") == {}  # never blocks


def test_the_split_is_named_by_its_sizes_and_a_hash_of_both_lists(tmp_path: Path) -> None:
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["a", "b", "c"], "val": ["d"]}, {"train": ["a", "b", "d"], "val": ["c"]}]))
    zero = settings.split_identity(splits, 0)
    assert zero is not None and zero.startswith("3 train / 1 val cases (")
    assert zero != settings.split_identity(splits, 1)
    splits.write_text(json.dumps([{"train": ["c", "a", "b"], "val": ["d"]}]))
    assert settings.split_identity(splits, 0) == zero  # the order of the lists does not matter
    assert settings.split_identity(splits, "all") is None and settings.split_identity(splits, 7) is None


def test_changes_are_named_from_to_and_numbers_compare_by_value() -> None:
    recorded = {"num_epochs": "1000", "initial_lr": "0.01", "batch_size": "2", "split": "8 train / 2 val cases (x)"}
    current = {"num_epochs": "1500", "initial_lr": "1e-2", "batch_size": "2", "split": "8 train / 2 val cases (y)",
               "plans": "nnUNetPlans"}  # plans unknown on the recorded side: not compared
    assert settings.compare(recorded, current) == [
        {"name": "num_epochs", "from": "1000", "to": "1500"},
        {"name": "split", "from": "8 train / 2 val cases (x)", "to": "8 train / 2 val cases (y)"}]
    assert settings.compare(recorded, recorded) == []


def test_the_built_settings_count_only_for_the_fingerprint_of_now(tmp_path: Path) -> None:
    cache = tmp_path / "network-shapes.json"
    cache.write_text(json.dumps({"fingerprint": "abc", "shapes": {}, "settings": {"num_epochs": "10"}}))
    assert settings.built_settings(cache, "abc") == {"num_epochs": "10"}
    assert settings.built_settings(cache, "edited-trainer") == {}
    cache.write_text(json.dumps({"fingerprint": "abc", "shapes": {}}))  # written before settings were kept
    assert settings.built_settings(cache, "abc") == {}


def test_the_record_survives_a_round_trip_and_damage_loses_only_it(tmp_path: Path) -> None:
    record = tmp_path / "settings.json"
    settings.write_record(record, {"split": "s", "num_epochs": "10"})
    assert settings.read_record(record) == {"split": "s", "num_epochs": "10"}
    record.write_text("[1, 2")
    assert settings.read_record(record) == {}

"""`nnunet-supervise train`: nnUNetv2_train's own command line mapped onto a run.yaml. The options are checked
against nnU-Net's own parser (read from nnunetv2 itself), so an option a new nnU-Net adds fails here instead of
passing through unseen; the CLI writes the run.yaml into the fold's folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from supervisor.cli import main
from supervisor.config import parse_config
from supervisor.trainargs import NNUNET_OPTIONS, TrainArgsError, parse


def nnunet_options(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The option strings of nnUNetv2_train's parser, as nnunetv2 builds it."""
    from nnunetv2.run import run_training

    seen: list[argparse.ArgumentParser] = []

    class Caught(Exception):
        pass

    def parse_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        seen.append(self)
        raise Caught

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(Caught):
        run_training.run_training_entry()
    return {o for a in seen[0]._actions for o in a.option_strings if o not in ("-h", "--help")}


def test_every_option_of_nnunets_own_parser_has_a_place(monkeypatch: pytest.MonkeyPatch) -> None:
    assert nnunet_options(monkeypatch) == set(NNUNET_OPTIONS)


def test_the_usual_command_maps_onto_the_run_yaml(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"x")
    req = parse(["4", "3d_fullres", "0", "-tr", "MyTrainer", "-p", "nnUNetResEncUNetMPlans", "--npz", "-device",
                 "cpu", "-pretrained_weights", "w.pth", "--c", "--max-restarts", "3", "--cooperative"], tmp_path)
    assert req.doc["nnunet"] == {"dataset": 4, "configuration": "3d_fullres", "fold": 0, "trainer": "MyTrainer",
                                 "plans": "nnUNetResEncUNetMPlans", "device": "cpu", "extra_args": ["--npz"],
                                 "pretrained_weights": str(tmp_path / "w.pth")}
    assert req.doc["restart"] == {"max_restarts": 3} and req.doc["cooperative"] == {"enabled": True}
    assert any("--c is the supervisor's" in n for n in req.notes)
    assert any("first launch only" in n for n in req.notes)
    cfg = parse_config({**req.doc, "paths": {"nnUNet_preprocessed": "/p", "nnUNet_results": "/r"}}, "test")
    assert cfg.nnunet.pretrained_weights == str(tmp_path / "w.pth")


def test_fold_all_and_a_dataset_name(tmp_path: Path) -> None:
    req = parse(["Dataset004_Hippocampus", "2d", "all", "--val", "--val_best"], tmp_path)
    assert req.doc["nnunet"]["fold"] == "all" and req.doc["nnunet"]["dataset"] == "Dataset004_Hippocampus"
    assert req.validate_only and req.doc["nnunet"]["extra_args"] == ["--val_best"]


@pytest.mark.parametrize(("argv", "words"), [
    (["4", "3d_fullres", "0", "-tr2", "X"], "not an option of nnUNetv2_train or ours: -tr2"),
    (["4", "3d_fullres", "0", "--continue"], "-pretrained_weights (nnunet.pretrained_weights)"),
    (["4", "3d_fullres"], "the following arguments are required: fold"),
    (["4", "3d_fullres", "x"], "FOLD 'x'"),
    (["4", "3d_fullres", "0", "-num_gpus", "two"], "invalid int value"),
    (["4", "3d_fullres", "0", "--val", "-pretrained_weights", "w"], "a validation-only run trains nothing"),
])
def test_a_bad_command_line_says_what_is_wrong_and_what_is_allowed(argv: list[str], words: str,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(TrainArgsError) as err:
        parse(argv, tmp_path)
    assert words in str(err.value)


def test_the_cli_writes_the_run_yaml_into_the_folds_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre, res = tmp_path / "pre", tmp_path / "res"
    (pre / "Dataset004_Hippocampus").mkdir(parents=True)
    res.mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(res))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    r = CliRunner().invoke(main, ["train", "4", "2d", "1", "-tr", "MyTrainer", "--npz", "-device", "cpu",
                                  "--write-only"])
    assert r.exit_code == 0, r.output
    target = res / "Dataset004_Hippocampus" / "MyTrainer__nnUNetPlans__2d" / "fold_1" / "supervisor" / "run.yaml"
    text = target.read_text()
    assert text.startswith("# Written by `nnunet-supervise train 4 2d 1 -tr MyTrainer --npz -device cpu")
    doc = yaml.safe_load(text)
    assert doc["paths"] == {"nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)}
    assert doc["nnunet"]["extra_args"] == ["--npz"] and doc["nnunet"]["fold"] == 1
    assert str(target) in r.output
    again = CliRunner().invoke(main, ["train", "4", "2d", "1", "-tr", "MyTrainer", "-device", "cpu",
                                      "--write-only"])
    assert again.exit_code == 0 and "existed with other settings" in again.output
    assert "extra_args" not in yaml.safe_load(target.read_text())["nnunet"]


def test_the_cli_refuses_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    r = CliRunner().invoke(main, ["train", "4", "2d", "0", "--bogus"])
    assert r.exit_code == 2 and "--bogus" in r.output and "-tr (nnunet.trainer)" in r.output
    r = CliRunner().invoke(main, ["train", "4", "2d", "0"])
    assert r.exit_code == 2 and "$nnUNet_results is not set" in r.output
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    (tmp_path / "Dataset004_X").mkdir()
    r = CliRunner().invoke(main, ["train", "4", "2d", "0", "--val", "-device", "cpu"])
    assert r.exit_code == 2 and "checkpoint_final.pth is missing" in r.output

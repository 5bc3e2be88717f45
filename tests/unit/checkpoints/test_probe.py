"""Content checks through the real probe subprocess (one verify_all call for the module), and compare()/hints."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from supervisor.checkpoints.probe import check_content, compare
from supervisor.checkpoints.verdict import Verdict
from supervisor.checkpoints.verify import verify_all
from tests.ckpt_fixtures import System, Touch, nnunet_checkpoint

EXPECT = {"trainer_name": "nnUNetTrainer", "configuration": "3d_fullres", "fold": 0}
WEIGHT_KEY = "encoder.stages.1.0.weight"


def _nan_weight(ckpt: dict[str, Any], _: Path) -> None:
    ckpt["network_weights"][WEIGHT_KEY][0, 0, 0, 0, 0] = math.nan


def _inf_momentum(ckpt: dict[str, Any], _: Path) -> None:
    ckpt["optimizer_state"]["state"][0]["momentum_buffer"].view(-1)[3] = math.inf


def _set(key: str, value: Any) -> Any:
    def edit(ckpt: dict[str, Any], _: Path) -> None:
        ckpt[key] = value
    return edit


def _init_arg(key: str, value: Any) -> Any:
    def edit(ckpt: dict[str, Any], _: Path) -> None:
        ckpt["init_args"][key] = value
    return edit


def _drop(key: str) -> Any:
    def edit(ckpt: dict[str, Any], _: Path) -> None:
        del ckpt[key]
    return edit


def _hostile(payload: type) -> Any:
    def edit(ckpt: dict[str, Any], canary: Path) -> None:
        ckpt["init_args"]["plans"] = payload(canary)  # buried where a real object tree would be
    return edit


CASES: dict[str, Any] = {
    "intact": None,
    "nan_weight": _nan_weight,
    "inf_momentum": _inf_momentum,
    "no_optimizer_state": _drop("optimizer_state"),
    "no_best_ema": _drop("_best_ema"),
    "epoch_negative": _set("current_epoch", -3),
    "epoch_string": _set("current_epoch", "7"),
    "epoch_bool": _set("current_epoch", True),
    "wrong_trainer": _set("trainer_name", "nnUNetTrainerNoDA"),
    "wrong_fold": _init_arg("fold", 1),
    "wrong_configuration": _init_arg("configuration", "2d"),
    "hostile_touch": _hostile(Touch),
    "hostile_system": _hostile(System),
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build every candidate, run verify_all once (one subprocess), and return verdicts by case name."""
    root = tmp_path_factory.mktemp("content")
    paths: dict[str, Path] = {}
    for name, edit in CASES.items():
        ckpt = nnunet_checkpoint()
        if edit is not None:
            edit(ckpt, root / f"CANARY-{name}")
        paths[name] = root / f"{name}.pth"
        torch.save(ckpt, paths[name])
    for payload in (Touch, System):
        name = f"hostile_top_level_{payload.__name__.lower()}"
        paths[name] = root / f"{name}.pth"
        torch.save(payload(root / f"CANARY-{name}"), paths[name])
    paths["truncated"] = root / "truncated.pth"
    torch.save(nnunet_checkpoint(), paths["truncated"])
    paths["truncated"].write_bytes(paths["truncated"].read_bytes()[:1000])

    verdicts, network_error = verify_all(list(paths.values()), EXPECT, network=None, env=dict(os.environ))

    return {"root": root, "network_error": network_error, "paths": paths,
            "verdicts": dict(zip(paths, verdicts, strict=True))}


def verdict(checked: dict[str, Any], name: str) -> Verdict:
    v: Verdict = checked["verdicts"][name]
    assert v.path == str(checked["paths"][name]), "verdicts must come back in the order given"
    return v


def damaged_text(checked: dict[str, Any], name: str) -> str:
    v = verdict(checked, name)
    assert v.structure_ok, v.problems  # these are sound zips: content is what is wrong
    assert v.content_ok is False
    assert v.damaged
    assert not v.ok
    assert v.problems and all(p.strip() for p in v.problems)
    return v.reason()


# --- through the real subprocess --------------------------------------------------------------------------------


def test_intact_checkpoint_passes_content_check(checked: dict[str, Any]) -> None:
    v = verdict(checked, "intact")

    assert v.ok, v.problems
    assert (v.structure_ok, v.content_ok, v.damaged) == (True, True, False)
    assert v.compatible is None  # no network given: not checked
    assert v.epoch == 7
    assert v.problems == []
    assert checked["network_error"] is None


def test_nan_in_a_network_weight_names_the_tensor(checked: dict[str, Any]) -> None:
    text = damaged_text(checked, "nan_weight")

    assert "NaN or Inf" in text
    assert f"network_weights.{WEIGHT_KEY}" in text


def test_inf_in_an_optimizer_momentum_buffer(checked: dict[str, Any]) -> None:
    text = damaged_text(checked, "inf_momentum")

    assert "NaN or Inf" in text
    assert "optimizer_state.state.0.momentum_buffer" in text


@pytest.mark.parametrize("name, key", [("no_optimizer_state", "optimizer_state"), ("no_best_ema", "_best_ema")])
def test_missing_required_key_is_named(checked: dict[str, Any], name: str, key: str) -> None:
    text = damaged_text(checked, name)

    assert "required key(s) missing" in text
    assert key in text


@pytest.mark.parametrize("name, shown", [("epoch_negative", "-3"), ("epoch_string", "'7'"), ("epoch_bool", "True")])
def test_insane_current_epoch(checked: dict[str, Any], name: str, shown: str) -> None:
    text = damaged_text(checked, name)

    assert f"current_epoch is {shown}" in text
    assert "not an integer" in text
    assert verdict(checked, name).epoch is None  # never a resume point, not even for sorting


def test_wrong_trainer_name_names_both(checked: dict[str, Any]) -> None:
    text = damaged_text(checked, "wrong_trainer")

    assert "'nnUNetTrainerNoDA'" in text
    assert "'nnUNetTrainer'" in text


def test_wrong_fold(checked: dict[str, Any]) -> None:
    text = damaged_text(checked, "wrong_fold")

    assert "init_args.fold is 1" in text
    assert "fold 0" in text


def test_wrong_configuration(checked: dict[str, Any]) -> None:
    text = damaged_text(checked, "wrong_configuration")

    assert "init_args.configuration is '2d'" in text
    assert "3d_fullres" in text


@pytest.mark.parametrize("name", ["hostile_touch", "hostile_system", "hostile_top_level_touch",
                                  "hostile_top_level_system"])
def test_hostile_pickle_never_runs(checked: dict[str, Any], name: str) -> None:
    v = verdict(checked, name)

    assert v.damaged
    assert not v.ok
    assert not (checked["root"] / f"CANARY-{name}").exists()


@pytest.mark.parametrize("name, global_name", [
    ("hostile_touch", "getattr"),
    ("hostile_system", "system"),
])
def test_hostile_pickle_inside_the_dict_is_refused_by_weights_only(checked: dict[str, Any], name: str,
                                                                    global_name: str) -> None:
    text = damaged_text(checked, name)

    assert "refused by torch.load(weights_only=True)" in text
    assert global_name in text
    assert "was not loaded" in text


@pytest.mark.parametrize("name", ["hostile_top_level_touch", "hostile_top_level_system"])
def test_hostile_top_level_object_is_stopped_by_the_structure_check(checked: dict[str, Any], name: str) -> None:
    v = verdict(checked, name)

    assert not v.structure_ok
    assert v.content_ok is None  # never handed to torch.load at all
    assert "not a dict" in v.reason()


@pytest.mark.process
@pytest.mark.parametrize("payload", [Touch, System],
                         ids=["touch", "system"])
def test_hostile_top_level_object_is_refused_by_the_content_check(tmp_path: Path, payload: type) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(payload(canary), path)

    ckpt, problems, epoch = check_content(str(path), EXPECT)

    assert not canary.exists()
    assert (ckpt, epoch) == (None, None)
    assert len(problems) == 1
    assert "refused by torch.load(weights_only=True)" in problems[0]


def test_hostile_payloads_are_live_under_plain_pickle(tmp_path: Path) -> None:
    """Control: the payloads used above do create their canary when unpickled without restrictions."""
    for payload in (Touch, System):
        canary = tmp_path / f"CANARY-{payload.__name__}"

        pickle.loads(pickle.dumps(payload(canary)))

        assert canary.exists()


def test_structurally_damaged_file_is_not_sent_to_the_probe(checked: dict[str, Any]) -> None:
    v = verdict(checked, "truncated")

    assert not v.structure_ok
    assert v.content_ok is None
    assert v.damaged
    assert "not a readable zip" in v.reason()


# --- compare() and hints, in-process ----------------------------------------------------------------------------


NET: dict[str, tuple[int, ...]] = {
    "encoder.stages.0.0.convs.0.conv.weight": (32, 1, 3, 3, 3),
    "encoder.stages.0.0.convs.0.conv.bias": (32,),
    "encoder.stages.1.0.convs.0.conv.weight": (64, 32, 3, 3, 3),
    "encoder.stages.1.0.convs.0.conv.bias": (64,),
    "decoder.stages.0.convs.0.conv.weight": (32, 64, 3, 3, 3),
    "decoder.seg_layers.0.weight": (2, 32, 1, 1, 1),
}


def weights(net: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """A checkpoint's network_weights as objects with a .shape, as torch tensors have."""
    return {prefix + k: SimpleNamespace(shape=torch.Size(v)) for k, v in net.items()}


def hint_text(result: dict[str, Any]) -> str:
    return " | ".join(result["hints"])


def test_compare_exact_match() -> None:
    result = compare(weights(NET), NET)

    assert result == {"missing_keys": [], "unexpected_keys": [], "shape_mismatches": [], "hints": []}


def test_compare_accepts_real_tensors() -> None:
    real = {k: torch.zeros(v) for k, v in NET.items()}

    assert compare(real, NET)["shape_mismatches"] == []


def test_compare_strips_module_prefix_like_nnunet() -> None:
    result = compare(weights(NET, "module."), NET)

    assert (result["missing_keys"], result["unexpected_keys"], result["shape_mismatches"]) == ([], [], [])
    assert "DDP" in hint_text(result)
    assert "fine" in hint_text(result)


def test_compare_keeps_module_prefix_the_network_itself_has() -> None:
    net = {"module.weight": (3,)}

    result = compare(weights(net), net)

    assert (result["missing_keys"], result["unexpected_keys"]) == ([], [])


def test_compare_double_module_prefix_is_stripped_once_only() -> None:
    result = compare(weights(NET, "module.module."), NET)

    assert result["missing_keys"] == sorted(NET)
    assert result["unexpected_keys"] == sorted("module." + k for k in NET)
    assert "twice" in hint_text(result)


def test_compare_orig_mod_prefix_from_torch_compile() -> None:
    result = compare(weights(NET, "_orig_mod."), NET)

    assert result["missing_keys"] == sorted(NET)
    assert result["unexpected_keys"] == sorted("_orig_mod." + k for k in NET)
    assert "_orig_mod." in hint_text(result)
    assert "torch.compile" in hint_text(result)


def test_compare_orig_mod_prefix_gives_no_false_architecture_hints() -> None:
    result = compare(weights(NET, "_orig_mod."), NET)

    assert len(result["hints"]) == 1, result["hints"]


def test_compare_extra_layer_suggests_an_edited_trainer() -> None:
    ckpt = {**NET, "extra_head.weight": (2, 32, 1, 1, 1)}

    result = compare(weights(ckpt), NET)

    assert result["unexpected_keys"] == ["extra_head.weight"]
    assert (result["missing_keys"], result["shape_mismatches"]) == ([], [])
    assert "trainer class" in hint_text(result)
    assert "edited" in hint_text(result)


def test_compare_extra_conv_inside_a_stage_is_not_a_stage_count_change() -> None:
    ckpt = {**NET, "encoder.stages.0.0.convs.1.conv.weight": (32, 32, 3, 3, 3)}

    result = compare(weights(ckpt), NET)

    assert result["unexpected_keys"] == ["encoder.stages.0.0.convs.1.conv.weight"]
    assert "number of stages" not in hint_text(result)
    assert "trainer class" in hint_text(result)


def test_compare_missing_stage() -> None:
    net = {**NET, "encoder.stages.5.0.convs.0.conv.weight": (320, 320, 3, 3, 3),
           "encoder.stages.5.0.convs.0.conv.bias": (320,)}

    result = compare(weights(NET), net)

    assert result["missing_keys"] == ["encoder.stages.5.0.convs.0.conv.bias",
                                      "encoder.stages.5.0.convs.0.conv.weight"]
    assert result["unexpected_keys"] == []
    assert "stage(s) [5]" in hint_text(result)
    assert "features_per_stage" in hint_text(result)


def test_compare_changed_channel_count() -> None:
    key = "encoder.stages.1.0.convs.0.conv.weight"
    ckpt = {**NET, key: (48, 32, 3, 3, 3)}

    result = compare(weights(ckpt), NET)

    assert result["shape_mismatches"] == [[key, [48, 32, 3, 3, 3], [64, 32, 3, 3, 3]]]
    assert (result["missing_keys"], result["unexpected_keys"]) == ([], [])
    assert "features_per_stage" in hint_text(result)
    assert key in hint_text(result)


def test_compare_seg_layers_differ() -> None:
    ckpt = {**NET, "decoder.seg_layers.1.weight": (2, 64, 1, 1, 1)}

    result = compare(weights(ckpt), NET)

    assert result["unexpected_keys"] == ["decoder.seg_layers.1.weight"]
    assert "seg_layers" in hint_text(result)
    assert "deep supervision" in hint_text(result)


def test_compare_module_prefix_with_a_real_mismatch_drops_the_ddp_all_clear() -> None:
    key = "decoder.seg_layers.0.weight"
    ckpt = {**NET, key: (3, 32, 1, 1, 1)}

    result = compare(weights(ckpt, "module."), NET)

    assert result["shape_mismatches"] == [[key, [3, 32, 1, 1, 1], [2, 32, 1, 1, 1]]]
    assert "fine" not in hint_text(result)


def test_network_shapes_are_cached_until_trainer_code_or_plans_change(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.checkpoints import probe as ckpt_probe

    trainers = tmp_path / "trainers"
    trainers.mkdir()
    (trainers / "MyTrainer.py").write_text("class MyTrainer: pass\n")
    (tmp_path / "plans.json").write_text('{"configurations": {}}')
    (tmp_path / "dataset.json").write_text('{"labels": {}}')
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers))
    builds: list[int] = []
    monkeypatch.setattr(ckpt_probe, "build_network_state",
                        lambda net: builds.append(1) or ({"w": (len(builds), 2)}, {}))
    net = {"trainer": "MyTrainer", "configuration": "3d_fullres", "fold": 0, "plans_file": str(tmp_path / "plans.json"),
           "dataset_json": str(tmp_path / "dataset.json"), "cache": str(tmp_path / "shapes.json")}

    assert ckpt_probe.network_state(net) == ({"w": (1, 2)}, False)
    assert ckpt_probe.network_state(net) == ({"w": (1, 2)}, True)  # a relaunch: no build
    (trainers / "MyTrainer.py").write_text("class MyTrainer: extra = 1\n")  # the trainer was edited
    assert ckpt_probe.network_state(net) == ({"w": (2, 2)}, False)
    (tmp_path / "plans.json").write_text('{"configurations": {"3d_fullres": {}}}')  # so were the plans
    assert ckpt_probe.network_state(net) == ({"w": (3, 2)}, False)
    assert ckpt_probe.network_state({**net, "cache": None}) == ({"w": (4, 2)}, False)  # no cache asked: always built
    assert len(builds) == 4

"""`check`'s disk estimate: the network counted from the plans, real sizes preferred, what is there subtracted, and a
problem only when the estimate clearly exceeds what is free."""

from __future__ import annotations

import copy
import json
import shutil
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor import preflight
from supervisor.context import RunContext
from supervisor.disk import estimate as estimate_module
from supervisor.disk.estimate import (
    ESTIMATE,
    LOG_BYTES,
    MEASURED,
    UPPER,
    DatasetFacts,
    at_once,
    checkpoint_bytes_from_plans,
    count_parameters,
    estimate_experiment,
    estimate_run,
    fold_need,
    folds_at_once,
    one_checkpoint,
    segmentation_heads,
)
from supervisor.experiment.context import ExperimentContext
from supervisor.expfile import DevicesSection
from supervisor.preflight import Report, _from_experiment, check_disk
from tests.unit.disk.conftest import CASE_SHAPE, CASES, TINY_PLANS, finish, write_splits

# Measured once with torch (nnunetv2's get_network_from_plans, deep supervision, one input channel, two heads): the
# parameters of the tiny dataset's networks, and the size of a 3d_fullres checkpoint (network weights, SGD state
# after a step, logging, init_args) torch.save wrote: about 44 MB, as the integration tests' real checkpoints are.
REAL_PARAMS = {"3d_fullres": 5_471_878, "2d": 467_396}
REAL_CHECKPOINT_3D = 43_852_505
REAL_RESENC_PARAMS = 25_767_113  # the 3d_fullres network as a ResidualEncoderUNet, blocks [1, 3, 4, 6], 4 in, 3 heads

Usage = namedtuple("Usage", "total used free")


def arch(configuration: str) -> dict[str, object]:
    return copy.deepcopy(TINY_PLANS["configurations"][configuration]["architecture"]["arch_kwargs"])


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_the_plans_network_is_counted_exactly(configuration: str) -> None:
    assert count_parameters(arch(configuration), 1, 2) == REAL_PARAMS[configuration]


def test_a_residual_encoder_is_counted_exactly() -> None:
    kwargs = arch("3d_fullres")
    del kwargs["n_conv_per_stage"]
    kwargs.update(n_blocks_per_stage=[1, 3, 4, 6], n_conv_per_stage_decoder=[1, 1, 1])
    assert count_parameters(kwargs, 4, 3) == REAL_RESENC_PARAMS


def test_the_checkpoint_estimate_is_within_two_percent_of_the_real_one(dataset: Path) -> None:
    facts = DatasetFacts.read(dataset, "nnUNetPlans")
    found = one_checkpoint(dataset.parent / "nowhere", "3d_fullres", facts)
    assert found is not None
    size, how, kind = found
    print(f"tiny 3d_fullres: estimate {size} bytes, real {REAL_CHECKPOINT_3D} ({size / REAL_CHECKPOINT_3D - 1:+.2%})")
    assert abs(size / REAL_CHECKPOINT_3D - 1) < 0.02
    assert kind == ESTIMATE and "estimate from the plans' network" in how and "5.47 M parameters" in how
    assert size == checkpoint_bytes_from_plans(REAL_PARAMS["3d_fullres"], facts.plans_bytes)


def test_plans_it_cannot_count_give_none() -> None:
    assert count_parameters({"features_per_stage": "many"}, 1, 2) is None
    assert count_parameters({}, 1, 2) is None


def test_a_real_checkpoint_of_another_fold_wins(tmp_path: Path, dataset: Path) -> None:
    model = tmp_path / "res" / "Dataset901_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_3").mkdir(parents=True)
    (model / "fold_3" / "checkpoint_best.pth").write_bytes(b"x" * 12345)
    (model / "fold_4").mkdir()
    (model / "fold_4" / "checkpoint_latest.pth").symlink_to(tmp_path / "elsewhere.pth")  # not followed
    (tmp_path / "elsewhere.pth").write_bytes(b"y" * 99999)
    found = one_checkpoint(model, "3d_fullres", DatasetFacts.read(dataset, "nnUNetPlans"))
    assert found == (12345, "the size of fold_3/checkpoint_best.pth", MEASURED)


def test_labels_to_heads() -> None:
    assert segmentation_heads({"background": 0, "a": 1, "b": 2}) == 3
    assert segmentation_heads({"background": 0, "a": 1, "ignore": 3}) == 2
    assert segmentation_heads({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3}) == 3


def test_a_fold_needs_checkpoints_validation_and_logs(dataset: Path, run_config: Callable[..., RunContext]) -> None:
    write_splits(dataset, val_per_fold=2)
    ctx = run_config(fold=1)
    plain, _ = fold_need(ctx, DatasetFacts.read(dataset, "nnUNetPlans"))
    parts = {p.label: p for p in plain.parts}
    one = checkpoint_bytes_from_plans(REAL_PARAMS["3d_fullres"], (dataset / "nnUNetPlans.json").stat().st_size)
    assert parts["checkpoints"].bytes == 3 * one  # what stays: final, best, one snapshot
    assert parts["while training"].bytes == 2 * one  # latest (nnU-Net deletes it at the end), an atomic temporary
    voxels = CASE_SHAPE[0] * CASE_SHAPE[1] * CASE_SHAPE[2]
    assert parts["validation"].bytes == 2 * voxels and parts["validation"].kind == UPPER  # 2 cases, uint8, no --npz
    assert "splits_final.json" in parts["validation"].how
    assert plain.firm == plain.more - parts["validation"].bytes


def test_npz_adds_the_softmax(tmp_path: Path, dataset: Path) -> None:
    write_splits(dataset, val_per_fold=2)
    (tmp_path / "npz.yaml").write_text("nnunet: {dataset: 901, configuration: 3d_fullres, fold: 0, device: cpu, "
                                       "extra_args: [--npz]}\npaths: {nnUNet_preprocessed: pre, nnUNet_results: res}\n")
    need, _ = fold_need(RunContext.load(tmp_path / "npz.yaml"), DatasetFacts.read(dataset, "nnUNetPlans"))
    validation = next(p for p in need.parts if p.label == "validation")
    voxels = CASE_SHAPE[0] * CASE_SHAPE[1] * CASE_SHAPE[2]
    assert validation.bytes == 2 * (voxels + 2 * 2 * voxels)  # uint8 segmentation + float16 softmax of 2 heads
    assert "--npz" in validation.how


def test_what_is_there_is_subtracted_and_a_finished_fold_needs_nothing(
        dataset: Path, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    facts = DatasetFacts.read(dataset, "nnUNetPlans")
    before, _ = fold_need(ctx, facts)
    finish(ctx.layout, checkpoint_bytes=1000, summary=False)  # training done, validation cut short
    during, _ = fold_need(ctx, facts)
    parts = {p.label: p for p in during.parts}
    # the real size now: of these files; final and best stay, latest is there only while it trains
    assert parts["checkpoints"].present == 2 * 1000 and parts["checkpoints"].bytes == 3 * 1000
    assert parts["while training"].present == 1000 and parts["while training"].bytes == 2 * 1000
    assert during.more < before.more
    (ctx.layout.fold_dir / "validation" / "summary.json").write_text("{}")
    done, _ = fold_need(ctx, facts)
    assert done.done == "finished" and done.more == 0


def test_check_says_needed_and_free_and_no_problem_when_it_fits(run_config: Callable[..., RunContext]) -> None:
    report = Report()
    check_disk(run_config(), report)
    lines = [n for n in report.notes if n.startswith("disk:")]
    assert any("still to be written" in n and "free" in n and "an estimate" in n for n in lines)
    assert any(n.startswith("disk: 3d_fullres:") and "checkpoints" in n and "logs" in n for n in lines)
    assert not report.problems and not report.warnings


def test_a_clear_shortfall_is_a_problem_saying_it_is_an_estimate(
        monkeypatch: pytest.MonkeyPatch, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 10**6, 10**6))  # 1 MB free
    report = Report()
    check_disk(ctx, report)
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert "not enough free space" in problem and "an estimate" in problem and "short by" in problem


def test_only_the_upper_bounds_overflowing_is_a_warning(
        monkeypatch: pytest.MonkeyPatch, run_config: Callable[..., RunContext]) -> None:
    ctx = run_config()
    estimate = estimate_run(ctx)
    firm = sum(n.firm for n in estimate.needs)
    upper = estimate.more - firm
    assert upper > 0
    free = firm + upper // 2  # the firm part fits, all of it would not, and not by twice
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, free))
    again = estimate_run(ctx)
    assert not again.problems() and len(again.warnings()) == 1


def test_the_predict_section_is_estimated_into_its_output(
        tmp_path: Path, run_config: Callable[..., RunContext]) -> None:
    inp = tmp_path / "images"
    inp.mkdir()
    for case in ("a", "b", "c"):
        (inp / f"{case}_0000.nii.gz").write_bytes(b"i" * 1000)
    ctx = run_config("predict: {input: images, output: out, save_probabilities: true}\n")
    estimate = estimate_run(ctx)
    pred = next(n for n in estimate.needs if n.name == "prediction")
    parts = {p.label: p for p in pred.parts}
    assert parts["segmentations"].bytes == 3 * 1000
    assert parts["probabilities"].bytes == 3 * 2 * 2 * CASE_SHAPE[0] * CASE_SHAPE[1] * CASE_SHAPE[2]
    assert pred.folder == tmp_path / "out"
    assert any(line.startswith("disk: prediction:") for line in estimate.lines())


def test_an_experiment_counts_every_cell_and_an_ensembled_prediction(
        tmp_path: Path, dataset: Path, experiment_file: Callable[[str], Path]) -> None:
    write_splits(dataset)
    inp = tmp_path / "images"
    inp.mkdir()
    (inp / "a_0000.nii.gz").write_bytes(b"i" * 500)
    exp = ExperimentContext.load(experiment_file("predict: {input: images, output: final}\n"))
    estimate = estimate_experiment(exp)
    names = [n.name for n in estimate.needs]
    # in nnU-Net's order of configurations
    assert names == ["2d/fold_0", "2d/fold_1", "3d_fullres/fold_0", "3d_fullres/fold_1", "prediction"]
    pred = estimate.needs[-1]
    seg = next(p for p in pred.parts if p.label == "segmentations")
    assert seg.bytes == 4 * 500  # two models, the ensemble, the postprocessed result
    assert any(p.label == "probabilities" and "2 model(s)" in p.how for p in pred.parts)
    fold = estimate.needs[2]
    validation = next(p for p in fold.parts if p.label == "validation")
    assert "--npz" in validation.how  # experiments pass --npz (experiment.npz)
    lines = estimate.lines()
    assert any(line.startswith("disk: 3d_fullres: ") and "2 fold(s)" in line for line in lines)
    report = Report()
    check_disk(exp, report)
    assert report.ok and any("still to be written" in n for n in report.notes)


def test_a_cell_of_an_experiment_leaves_the_estimate_to_the_experiment(
        experiment_file: Callable[[str], Path], run_config: Callable[..., RunContext]) -> None:
    exp = ExperimentContext.load(experiment_file(""))
    assert _from_experiment(exp.run(exp.cells[0]))
    assert not _from_experiment(run_config())


def test_cheap_checks_size_the_next_launch_from_the_plans(run_config: Callable[..., RunContext]) -> None:
    from supervisor.preflight import cheap_checks

    report = Report()
    cheap_checks(run_config(), report)
    assert any(n.startswith("disk: the next launch needs") and "estimate from the plans' network" in n
               for n in report.notes)


# ---- what stays and what exists only while a fold trains ----


def test_latest_and_the_temporary_count_only_for_the_folds_training_at_once(
        tmp_path: Path, dataset: Path) -> None:
    """15 unfinished folds of a measured checkpoint size, one slot: what stays (final, best, a snapshot) for every
    fold, latest and an atomic write's temporary for one (nnU-Net deletes latest when a fold finishes)."""
    folds = list(range(15))
    (dataset / "splits_final.json").write_text(json.dumps(
        [{"train": CASES[2:], "val": CASES[:2]} for _ in folds]))
    size = 10_000
    model = tmp_path / "res" / "Dataset901_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_99").mkdir(parents=True)  # not a cell: only its size is measured
    (model / "fold_99" / "checkpoint_final.pth").write_bytes(b"c" * size)
    path = tmp_path / "fifteen.yaml"
    path.write_text(f"experiment: {{configurations: [3d_fullres], folds: {folds}}}\n"
                    "nnunet: {dataset: 901, device: cpu}\n"
                    "paths: {nnUNet_preprocessed: pre, nnUNet_results: res}\n")
    estimate = estimate_experiment(ExperimentContext.load(path))
    needs = [n for n in estimate.needs if not n.done]
    assert len(needs) == 15
    validation = sum(p.more for n in needs for p in n.parts if p.label == "validation")
    assert validation > 0
    firm = sum(n.firm for n in needs)
    assert firm == 15 * 3 * size + 1 * 2 * size + 15 * LOG_BYTES  # validation is an upper bound: not firm
    assert estimate.more == firm + validation
    training = [p for n in needs for p in n.parts if p.label == "while training"]
    assert len(training) == 1 and training[0].kind == ESTIMATE
    assert "1 of the 15 unfinished folds" in training[0].how and "experiment.devices.slots: 1" in training[0].how
    line = next(x for x in estimate.lines() if x.startswith("disk: 3d_fullres:"))
    assert "and for 1 of these 15 fold(s), while training" in line


def test_a_run_counts_latest_and_the_temporary_for_its_one_fold(run_config: Callable[..., RunContext]) -> None:
    estimate = estimate_run(run_config())
    training = next(p for p in estimate.needs[0].parts if p.label == "while training")
    assert training.kind == ESTIMATE and "a run.yaml trains one fold" in training.how


def _devices(device: str, **devices: object) -> Any:
    spec = SimpleNamespace(nnunet=SimpleNamespace(device=device),
                           experiment=SimpleNamespace(devices=DevicesSection(**devices)))
    return SimpleNamespace(spec=spec)


def test_how_many_folds_train_at_once() -> None:
    assert folds_at_once(_devices("cpu", slots=3))[:2] == (3, 3)
    assert folds_at_once(_devices("cuda", gpus=[0, 1], per_gpu=2))[:2] == (4, 4)
    firm, most, why = folds_at_once(_devices("cuda", gpus="auto", per_gpu=2))
    assert (firm, most) == (2, None) and "not asked here" in why
    firm, most, why = folds_at_once(_devices("cuda", gpus=[0, 1], per_gpu="auto"))
    assert (firm, most) == (1, None) and "packs folds by GPU memory" in why


def test_folds_that_may_train_at_once_beyond_the_known_are_an_upper_bound(
        dataset: Path, run_config: Callable[..., RunContext]) -> None:
    facts = DatasetFacts.read(dataset, "nnUNetPlans")
    needs = [fold_need(run_config(fold=f), facts)[0] for f in range(3)]
    parts = [p for n in at_once(needs, 1, None, "test") for p in n.parts if p.label == "while training"]
    assert [p.kind for p in parts] == [ESTIMATE, UPPER, UPPER]
    assert all("2 more as an upper bound" in p.how for p in parts)


def test_the_logs_figure_says_what_it_covers_and_what_not(run_config: Callable[..., RunContext]) -> None:
    logs = next(p for p in estimate_run(run_config()).needs[0].parts if p.label == "logs")
    assert logs.bytes == LOG_BYTES == 16 * 2**20
    assert "ordinary run" in logs.how and "cut at 96.0 MiB" in logs.how and "not counted" in logs.how


# ---- damaged or unexpected values: a note, never an exception ----

DAMAGES: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "shape with null": ("dataset_fingerprint.json",
                        lambda d: d["shapes_after_crop"].__setitem__(0, [32, None, 24]),
                        "dataset_fingerprint.json's shapes_after_crop[0] is [32, null, 24]"),
    "shape of a string": ("dataset_fingerprint.json", lambda d: d.__setitem__("shapes_after_crop", [["a"]]),
                          "dataset_fingerprint.json's shapes_after_crop[0] is [\"a\"]"),
    "shapes not a list": ("dataset_fingerprint.json", lambda d: d.__setitem__("shapes_after_crop", 7),
                          "shapes_after_crop is 7"),
    "relative size": ("dataset_fingerprint.json",
                      lambda d: d.__setitem__("median_relative_size_after_cropping", "big"),
                      "median_relative_size_after_cropping is \"big\""),
    "channel_names": ("dataset.json", lambda d: d.__setitem__("channel_names", 1),
                      "dataset.json's channel_names is 1"),
    "labels": ("dataset.json", lambda d: d.__setitem__("labels", "x"), "dataset.json's labels is \"x\""),
    "norm_op_kwargs": ("nnUNetPlans.json",
                       lambda d: d["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].__setitem__(
                           "norm_op_kwargs", "x"),
                       "arch_kwargs.norm_op_kwargs is \"x\""),
    "features": ("nnUNetPlans.json",
                 lambda d: d["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].__setitem__(
                     "features_per_stage", [32, "many"]),
                 "arch_kwargs.features_per_stage is [32, \"many\"]"),
    "kernel": ("nnUNetPlans.json",
               lambda d: d["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["kernel_sizes"].__setitem__(
                   1, [3, None, 3]),
               "arch_kwargs.kernel_sizes[1] is [3, null, 3]"),
    "decoder convs": ("nnUNetPlans.json",
                      lambda d: d["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].__setitem__(
                          "n_conv_per_stage_decoder", {"a": 1}),
                      "n_conv_per_stage_decoder is {\"a\": 1}"),
    "architecture": ("nnUNetPlans.json",
                     lambda d: d["configurations"]["3d_fullres"].__setitem__("architecture", "x"),
                     "3d_fullres architecture is \"x\""),
}


def _damage(dataset: Path, name: str) -> str:
    file, change, said = DAMAGES[name]
    doc = json.loads((dataset / file).read_text())
    change(doc)
    (dataset / file).write_text(json.dumps(doc))
    return said


def _found(said: str, lines: list[str]) -> list[str]:
    return [n for n in lines if said in n and "disk: cannot estimate" in n]


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_value_is_a_note_in_check_disk(
        name: str, dataset: Path, run_config: Callable[..., RunContext],
        experiment_file: Callable[[str], Path]) -> None:
    write_splits(dataset)
    said = _damage(dataset, name)
    for target in (run_config(), ExperimentContext.load(experiment_file(""))):
        report = Report()
        check_disk(target, report)
        assert len(_found(said, report.notes)) == 1, report.notes  # said once, however many folds
        assert not report.problems and not report.warnings
        assert not any("the estimate failed" in w for w in report.warnings)


READ_BY_RUN = [n for n, (file, _, _) in DAMAGES.items() if file != "dataset_fingerprint.json"]


def _full_check(ctx: RunContext, monkeypatch: pytest.MonkeyPatch) -> Report:
    monkeypatch.setattr(preflight, "find_trainer", lambda *a, **k: {"found": True, "file": "nnUNetTrainer.py"})
    return preflight.full_check(ctx)


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_value_leaves_check_as_it_was(
        name: str, monkeypatch: pytest.MonkeyPatch, dataset: Path, run_config: Callable[..., RunContext]) -> None:
    """full_check (check of a run.yaml) and cheap_checks (what run calls before each launch): no exception, the
    note, and the same problems as without the damage (check's exit is not the damage's)."""
    write_splits(dataset)
    clean_full = _full_check(run_config(), monkeypatch)
    clean_cheap = Report()
    preflight.cheap_checks(run_config(), clean_cheap)
    said = _damage(dataset, name)
    full = _full_check(run_config(), monkeypatch)
    assert full.problems == clean_full.problems
    assert len(_found(said, full.notes)) == 1, full.notes
    cheap = Report()
    preflight.cheap_checks(run_config(), cheap)
    assert cheap.problems == clean_cheap.problems
    # run reads only the plans and dataset.json: a damaged fingerprint is not its to say
    assert len(_found(said, cheap.notes)) == (1 if name in READ_BY_RUN else 0), cheap.notes


def test_the_launch_check_reads_no_fingerprint(
        monkeypatch: pytest.MonkeyPatch, dataset: Path, run_config: Callable[..., RunContext]) -> None:
    """cheap_checks (before every launch) sizes a checkpoint from the plans and dataset.json it read already, as
    before the estimate: dataset_fingerprint.json is check's alone."""
    write_splits(dataset)
    read: list[str] = []
    real = estimate_module.load_json, Path.read_text, Path.read_bytes

    def spy(i: int) -> Any:
        def read_it(path: Path, *a: Any, **k: Any) -> Any:
            read.append(path.name)
            return real[i](path, *a, **k)
        return read_it

    monkeypatch.setattr(estimate_module, "load_json", spy(0))
    monkeypatch.setattr(Path, "read_text", spy(1))
    monkeypatch.setattr(Path, "read_bytes", spy(2))
    report = Report()
    preflight.cheap_checks(run_config(), report)
    assert any(n.startswith("disk: the next launch needs") for n in report.notes)
    assert "dataset_fingerprint.json" not in read
    assert read.count("nnUNetPlans.json") == 1 and read.count("dataset.json") == 1, read


def test_a_bug_in_the_estimate_is_a_warning_not_an_exception(
        monkeypatch: pytest.MonkeyPatch, run_config: Callable[..., RunContext]) -> None:
    def broken(ctx: RunContext) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(preflight, "estimate_run", broken)
    report = Report()
    preflight.check_disk(run_config(), report)
    assert report.ok and len(report.warnings) == 1
    assert "the estimate failed (KeyError" in report.warnings[0] and "bug" in report.warnings[0]


def test_unreadable_dataset_files_are_notes(dataset: Path) -> None:
    (dataset / "dataset.json").write_text("{not json")
    (dataset / "dataset_fingerprint.json").write_text("[1, 2]")
    (dataset / "splits_final.json").write_text('{"a": 1}')
    facts = DatasetFacts.read(dataset, "nnUNetPlans")
    assert (facts.channels, facts.heads, facts.case_voxels) == (1, 2, ())
    text = "\n".join(facts.problems)
    assert "dataset.json is unreadable" in text and "1 channel and 2 heads assumed" in text
    assert "dataset_fingerprint.json is [1, 2], not an object" in text
    assert "splits_final.json is {\"a\": 1}, not a list of folds" in text
    assert all(p.startswith("cannot estimate ") for p in facts.problems)


@pytest.mark.parametrize("configurations", [[1], {"3d_fullres": 5}])
def test_plans_nnunet_cannot_train_from_are_a_problem_before_the_launch(
        configurations: object, dataset: Path, run_config: Callable[..., RunContext]) -> None:
    plans = json.loads((dataset / "nnUNetPlans.json").read_text())
    (dataset / "nnUNetPlans.json").write_text(json.dumps({**plans, "configurations": configurations}))
    report = Report()
    preflight.cheap_checks(run_config(), report)  # never a traceback
    assert any("nnU-Net cannot train from" in p for p in report.problems), report.problems

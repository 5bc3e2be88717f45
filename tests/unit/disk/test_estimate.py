"""`check`'s disk estimate: the network counted from the plans, real sizes preferred, what is there subtracted, and a
problem only when the estimate clearly exceeds what is free."""

from __future__ import annotations

import copy
import shutil
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.context import RunContext
from supervisor.disk.estimate import (
    ESTIMATE,
    MEASURED,
    UPPER,
    DatasetFacts,
    checkpoint_bytes_from_plans,
    count_parameters,
    estimate_experiment,
    estimate_run,
    fold_need,
    one_checkpoint,
    segmentation_heads,
)
from supervisor.experiment.context import ExperimentContext
from supervisor.preflight import Report, _from_experiment, check_disk
from tests.unit.disk.conftest import CASE_SHAPE, TINY_PLANS, finish, write_splits

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
    assert parts["checkpoints"].bytes == 5 * one  # latest, best, final, one snapshot, an atomic write's temporary
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
    checkpoints = next(p for p in during.parts if p.label == "checkpoints")
    assert checkpoints.present == 3 * 1000 and checkpoints.bytes == 5 * 1000  # the real size now: of these files
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

"""plan_resume: which checkpoint the next launch resumes from, decided from hand-made verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.checkpoints.plan import ResumePlan, plan_resume, warm_start_blockers
from supervisor.checkpoints.verdict import Verdict

FOLD = Path("/results/Dataset901_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0")
SNAPSHOTS = FOLD / "supervisor" / "snapshots"


def valid(name: str, epoch: int | None, *, compatible: bool | None = True, folder: Path = FOLD) -> Verdict:
    return Verdict(str(folder / name), epoch=epoch, structure_ok=True, content_ok=True, compatible=compatible)


def snapshot(epoch: int) -> Verdict:
    return valid(f"checkpoint_latest.epoch{epoch:06d}.pth", epoch, folder=SNAPSHOTS)


def corrupt(name: str, problem: str = "file is empty (0 bytes)") -> Verdict:
    return Verdict(str(FOLD / name), structure_ok=False, problems=[problem])


def nan(name: str, epoch: int) -> Verdict:
    return Verdict(str(FOLD / name), epoch=epoch, structure_ok=True, content_ok=False,
                   problems=["1 tensor(s) hold NaN or Inf, e.g. network_weights.decoder.seg_layers.0.weight"])


def incompatible(name: str, epoch: int) -> Verdict:
    return Verdict(str(FOLD / name), epoch=epoch, structure_ok=True, content_ok=True, compatible=False,
                   problems=["does not fit the network nnUNetTrainer builds: 0 missing, 1 unexpected key(s), "
                             "0 shape mismatch(es)"],
                   unexpected_keys=["extra.weight"],
                   hints=["the trainer builds a different network than the one that wrote this checkpoint"])


def plan(verdicts: list[Verdict], *, had_checkpoints: bool = True, allow_fresh_start: bool = False,
         on_incompatible: str = "stop", warm_from: Verdict | None = None) -> ResumePlan:
    return plan_resume(verdicts, FOLD, had_checkpoints=had_checkpoints, allow_fresh_start=allow_fresh_start,
                       on_incompatible=on_incompatible, warm_from=warm_from)


# --- nothing usable ---------------------------------------------------------------------------------------------


def test_no_candidates_and_no_history_starts_fresh() -> None:
    assert plan([], had_checkpoints=False) == ResumePlan("fresh")


def test_all_damaged_gives_up_naming_every_reason() -> None:
    latest = corrupt("checkpoint_latest.pth", "not a readable zip archive (File is not a zip file): truncated")
    best = nan("checkpoint_best.pth", 40)

    result = plan([latest, best])

    assert result.action == "give_up"
    assert result.kind == "no_valid_checkpoint"
    assert result.source is None
    assert result.quarantine == (latest, best)
    assert "checkpoint_latest.pth: not a readable zip archive" in result.message
    assert "checkpoint_best.pth: 1 tensor(s) hold NaN or Inf" in result.message
    assert "allow_fresh_start" in result.message


def test_damaged_files_without_recorded_history_still_give_up() -> None:
    """Damaged checkpoints on disk are history enough: --c must not silently start over."""
    result = plan([corrupt("checkpoint_latest.pth")], had_checkpoints=False)

    assert (result.action, result.kind) == ("give_up", "no_valid_checkpoint")


def test_checkpoints_that_vanished_give_up() -> None:
    result = plan([], had_checkpoints=True)

    assert (result.action, result.kind) == ("give_up", "no_valid_checkpoint")
    assert "gone" in result.message
    assert result.quarantine == ()


def test_all_damaged_with_allow_fresh_start_starts_fresh_and_quarantines() -> None:
    latest, best = corrupt("checkpoint_latest.pth"), nan("checkpoint_best.pth", 40)

    result = plan([latest, best], allow_fresh_start=True)

    assert result.action == "fresh"
    assert result.kind == ""
    assert result.quarantine == (latest, best)
    assert "epoch 0" in result.message
    assert "allow_fresh_start" in result.message
    assert "checkpoint_latest.pth: file is empty" in result.message


# --- choosing among valid ones ----------------------------------------------------------------------------------


def test_newest_valid_by_epoch_is_chosen() -> None:
    latest, best, snap = valid("checkpoint_latest.pth", 50), valid("checkpoint_best.pth", 42), snapshot(50)

    result = plan([latest, best, snap])

    assert result.action == "resume"
    assert result.source is latest
    assert result.quarantine == ()


def test_best_newer_than_latest_is_staged() -> None:
    latest, best = valid("checkpoint_latest.pth", 50), valid("checkpoint_best.pth", 73)

    result = plan([latest, best])

    assert (result.action, result.source, result.stage) == ("resume", best, True)
    assert result.quarantine == ()


def test_latest_newest_is_not_staged() -> None:
    latest, best = valid("checkpoint_latest.pth", 50), valid("checkpoint_best.pth", 42)

    result = plan([latest, best])

    assert (result.source, result.stage) == (latest, False)


def test_final_present_is_chosen_without_staging() -> None:
    final, latest, best = (valid("checkpoint_final.pth", 1000), valid("checkpoint_latest.pth", 950),
                           valid("checkpoint_best.pth", 990))

    result = plan([final, latest, best])

    assert (result.action, result.source, result.stage) == ("resume", final, False)


def test_final_wins_a_tie_with_latest() -> None:
    final, latest = valid("checkpoint_final.pth", 1000), valid("checkpoint_latest.pth", 1000)

    result = plan([latest, final])

    assert (result.source, result.stage) == (final, False)


def test_equal_epochs_latest_beats_its_snapshot() -> None:
    latest, snap = valid("checkpoint_latest.pth", 50), snapshot(50)

    for order in ([latest, snap], [snap, latest]):
        result = plan(order)
        assert (result.source, result.stage) == (latest, False)


def test_snapshot_newest_when_latest_is_damaged() -> None:
    latest, best, snap = corrupt("checkpoint_latest.pth"), valid("checkpoint_best.pth", 42), snapshot(50)

    result = plan([latest, best, snap])

    assert (result.action, result.source, result.stage) == ("resume", snap, True)
    assert result.quarantine == (latest,)


def test_only_a_snapshot_left_is_staged() -> None:
    latest, snap = corrupt("checkpoint_latest.pth"), snapshot(50)

    result = plan([latest, snap])

    assert (result.source, result.stage) == (snap, True)


def test_damaged_final_is_quarantined_and_latest_used_as_is() -> None:
    final, latest = nan("checkpoint_final.pth", 1000), valid("checkpoint_latest.pth", 950)

    result = plan([final, latest])

    assert (result.source, result.stage) == (latest, False)  # final moves away, so --c loads latest anyway
    assert result.quarantine == (final,)


def test_a_damaged_newer_epoch_is_never_chosen() -> None:
    best, latest = nan("checkpoint_best.pth", 99), valid("checkpoint_latest.pth", 50)

    result = plan([latest, best])

    assert result.source is latest
    assert result.quarantine == (best,)


def test_not_checked_compatibility_counts_as_usable() -> None:
    latest = valid("checkpoint_latest.pth", 50, compatible=None)
    best = valid("checkpoint_best.pth", 42)

    result = plan([latest, best])

    assert (result.action, result.source) == ("resume", latest)


def test_content_not_checked_counts_as_usable() -> None:
    """When the probe could not run, the structural verdict alone (content_ok None) is enough to resume."""
    latest = Verdict(str(FOLD / "checkpoint_latest.pth"), epoch=50, structure_ok=True)

    result = plan([latest])

    assert (result.action, result.source, result.stage) == ("resume", latest, False)


# --- incompatible -----------------------------------------------------------------------------------------------


def test_newest_valid_incompatible_gives_up_and_is_not_quarantined() -> None:
    latest, best, damaged = (incompatible("checkpoint_latest.pth", 50), valid("checkpoint_best.pth", 42),
                             corrupt("checkpoint_final.pth"))

    result = plan([damaged, latest, best])

    assert result.action == "give_up"
    assert result.kind == "incompatible_checkpoint"
    assert result.source is latest
    assert latest not in result.quarantine
    assert result.quarantine == (damaged,)
    assert "checkpoint_latest.pth (epoch 50)" in result.message
    assert "different network" in result.message  # the hints


@pytest.mark.parametrize("on_incompatible", ["stop", "warm_start"])
def test_incompatible_does_not_fall_back_to_an_older_compatible_one(on_incompatible: str) -> None:
    latest, best = incompatible("checkpoint_latest.pth", 50), valid("checkpoint_best.pth", 42)

    result = plan([latest, best], on_incompatible=on_incompatible)

    assert result.action != "resume"
    assert result.source is latest


def test_incompatible_with_warm_start() -> None:
    latest = incompatible("checkpoint_latest.pth", 50)

    result = plan([latest], on_incompatible="warm_start")

    assert result.action == "warm_start"
    assert result.source is latest
    assert result.quarantine == ()
    assert "WARM START" in result.message
    assert "-pretrained_weights" in result.message
    assert "optimizer" in result.message


def test_incompatible_older_checkpoint_does_not_matter_when_the_newest_fits() -> None:
    latest, best = valid("checkpoint_latest.pth", 50), incompatible("checkpoint_best.pth", 42)

    result = plan([latest, best])

    assert (result.action, result.source) == ("resume", latest)
    assert result.quarantine == ()


@pytest.mark.parametrize("missing, mismatches, blocked", [
    (["extra_head.weight"], [], True),  # the network has a layer the checkpoint lacks
    ([], [["encoder.stages.0.0.convs.0.conv.weight", [32, 1, 3, 3, 3], [16, 1, 3, 3, 3]]], True),
    (["decoder.seg_layers.4.weight"], [["decoder.seg_layers.0.weight", [2, 320, 1, 1, 1], [3, 320, 1, 1, 1]]],
     False),  # only segmentation heads differ: nnU-Net skips them when loading pretrained weights
])
def test_warm_start_only_where_nnunet_pretrained_weights_can_load_it(
        missing: list[str], mismatches: list[Any], blocked: bool) -> None:
    latest = Verdict(str(FOLD / "checkpoint_latest.pth"), epoch=50, structure_ok=True, content_ok=True,
                     compatible=False, missing_keys=missing, shape_mismatches=mismatches)

    result = plan([latest], on_incompatible="warm_start")

    assert warm_start_blockers(latest) == (sorted(missing + [m[0] for m in mismatches]) if blocked else [])
    if blocked:
        assert (result.action, result.kind) == ("give_up", "incompatible_checkpoint")
        assert "a warm start cannot help" in result.message
    else:
        assert result.action == "warm_start" and result.source is latest


def test_a_warm_start_without_a_checkpoint_since_is_repeated_not_a_fresh_start() -> None:
    kept = incompatible("warm_start/checkpoint_latest.pth", 50)

    assert plan([], warm_from=kept).action == "warm_start"
    assert plan([], warm_from=kept).source is kept
    assert plan([corrupt("checkpoint_latest.pth")], warm_from=kept).quarantine[0].path.endswith("latest.pth")
    new_latest = valid("checkpoint_latest.pth", 2)
    assert plan([new_latest], warm_from=kept).source is new_latest  # its own checkpoints win

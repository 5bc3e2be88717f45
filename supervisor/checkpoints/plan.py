"""Which checkpoint to resume from: a pure decision over verdicts, carried out by
checkpoints.prepare.

nnU-Net's --c loads checkpoint_final, else checkpoint_latest, else checkpoint_best. We resume from the newest
*valid* checkpoint by epoch among those and our own snapshots; when that is not the one --c would load, it is
staged as checkpoint_latest.pth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from supervisor.checkpoints.verdict import Verdict
from supervisor.layout import CHECKPOINT_NAMES

PlanAction = Literal["resume", "fresh", "give_up", "warm_start"]


@dataclass(frozen=True)
class ResumePlan:
    """What the next launch does about checkpoints."""

    action: PlanAction
    source: Verdict | None = None  # the checkpoint to resume (or warm-start) from
    stage: bool = False  # copy source over checkpoint_latest.pth first
    quarantine: tuple[Verdict, ...] = ()
    kind: str = ""  # give_up reason code
    message: str = ""


def _rank(v: Verdict, fold_dir: Path) -> int:
    """Tie-break equal epochs: what --c would load anyway beats a copy (final > latest > best > snapshot)."""
    p = Path(v.path)
    if p.parent == fold_dir and p.name in CHECKPOINT_NAMES:
        return 3 - CHECKPOINT_NAMES.index(p.name)
    return 0


def warm_start_blockers(v: Verdict) -> list[str]:
    """Network keys nnU-Net's -pretrained_weights would refuse: it needs every key outside the segmentation heads
    (".seg_layers.") in the checkpoint with the same shape (load_pretrained_weights asserts it)."""
    keys = [*v.missing_keys, *(m[0] for m in v.shape_mismatches)]
    return sorted(k for k in keys if ".seg_layers." not in k)


def plan_resume(verdicts: list[Verdict], fold_dir: Path, *, had_checkpoints: bool, allow_fresh_start: bool,
                on_incompatible: str, warm_from: Verdict | None = None) -> ResumePlan:
    """Decide from the verdicts on every candidate (fold checkpoints and snapshots).

    warm_from: the weights of a warm start whose training has not written a checkpoint of its own yet.
    """
    damaged = tuple(v for v in verdicts if v.damaged)
    usable = [v for v in verdicts if not v.damaged]
    if not usable and warm_from is not None and not warm_from.damaged:
        return ResumePlan("warm_start", source=warm_from, quarantine=damaged,
                          message="no checkpoint written since the warm start: WARM START again from "
                                  f"{warm_from.path} (epoch, optimizer and LR schedule start over)")
    if not usable:
        if not (had_checkpoints or damaged):
            return ResumePlan("fresh")
        why = "; ".join(f"{Path(v.path).name}: {v.reason()}" for v in damaged) or "they are gone"
        if allow_fresh_start:
            return ResumePlan("fresh", quarantine=damaged,
                              message=f"no valid checkpoint ({why}); starting from epoch 0 because "
                                      "checkpoint.allow_fresh_start is true")
        return ResumePlan("give_up", quarantine=damaged, kind="no_valid_checkpoint",
                          message=f"checkpoints existed for this run but none is valid ({why}); refusing to let --c "
                                  "silently start from scratch. Set checkpoint.allow_fresh_start: true to allow it")
    best = max(usable, key=lambda v: (v.epoch if v.epoch is not None else -1, _rank(v, fold_dir)))
    if best.compatible is False:
        blockers = warm_start_blockers(best)
        if on_incompatible == "warm_start" and blockers:
            return ResumePlan("give_up", source=best, quarantine=damaged, kind="incompatible_checkpoint",
                              message=f"{Path(best.path).name} (epoch {best.epoch}) does not fit the network, and "
                                      "a warm start cannot help: nnU-Net's -pretrained_weights needs every network "
                                      "key outside seg_layers in the checkpoint with the same shape; these are not: "
                                      f"{', '.join(blockers[:5])}{' ...' if len(blockers) > 5 else ''}")
        if on_incompatible == "warm_start":
            return ResumePlan("warm_start", source=best, quarantine=damaged,
                              message=f"{Path(best.path).name} (epoch {best.epoch}) does not fit the network; "
                                      "WARM START with -pretrained_weights: epoch, optimizer and LR schedule start "
                                      "over (checkpoint.on_incompatible: warm_start)")
        return ResumePlan("give_up", source=best, quarantine=damaged, kind="incompatible_checkpoint",
                          message=f"{Path(best.path).name} (epoch {best.epoch}) does not fit the network the trainer "
                                  f"builds: {'; '.join(best.hints) or best.reason()}")
    in_fold = {Path(v.path).name: v for v in usable if Path(v.path).parent == fold_dir}
    nnunet_pick = next((in_fold[n] for n in CHECKPOINT_NAMES if n in in_fold), None)
    return ResumePlan("resume", source=best, stage=nnunet_pick is not best, quarantine=damaged)

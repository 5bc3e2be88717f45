"""Before a launch: verify every candidate checkpoint, decide which one the trainer resumes from, and make the
fold folder say so (quarantine the damaged, stage a newer one as checkpoint_latest.pth, snapshot the verified).

Runs off the supervisor's main thread (verification takes seconds when a verdict is not cached). It returns what
happened as records and an outcome; the runner writes the records and feeds the outcome to the lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from supervisor.atomic import atomic_copy
from supervisor.checkpoints.plan import ResumePlan, plan_resume, warm_start_blockers
from supervisor.checkpoints.store import CheckpointStore
from supervisor.checkpoints.verdict import Verdict
from supervisor.checkpoints.verify import ProbeError, VerdictCache, structure_verdict, verify_all
from supervisor.core.messages import Record
from supervisor.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Memory:
    """What the run remembers about its checkpoints across attempts and supervisor restarts (state.json)."""

    had_checkpoints: bool = False  # checkpoints existed once: none valid now is not a fresh start
    verified_epoch: int | None = None  # newest checkpoint epoch ever resumed from
    warm_weights: str | None = None  # a warm start's weights, until its training writes a checkpoint


@dataclass(frozen=True)
class Outcome:
    """What the next launch does: fails (`failure` says why), or runs with these arguments."""

    memory: Memory
    records: list[Record] = field(default_factory=list)
    failure: tuple[str, str] | None = None  # (kind, message)
    failure_record: Record | None = None  # e.g. incompatible_checkpoint with its three lists
    pretrained: str | None = None  # -pretrained_weights (a warm start): the launch then goes without --c
    expect_epoch: int | None = None  # the epoch the launched trainer must resume at
    resumed_from: str | None = None  # the verified checkpoint it resumes from


@dataclass(frozen=True)
class Checker:
    """How to verify: what the run expects of a checkpoint, the network to compare with, the probe's environment."""

    expect: Mapping[str, Any]
    network: Mapping[str, Any] | None
    env: Mapping[str, str]
    cache: VerdictCache | None = None
    written: Path | None = None  # the cooperative trainer's records of what it wrote (checkpoints.verify)

    def verify(self, paths: list[Path], nice: bool = False) -> tuple[list[Verdict], str | None]:
        try:
            return verify_all(paths, self.expect, self.network, self.env, self.cache, nice=nice,
                              written=self.written)
        except ProbeError as exc:
            # Our own verifier failed, not the checkpoints: fall back to the structural check alone.
            log.warning("content/compatibility check could not run (%s); using the structural check only", exc)
            return [structure_verdict(p) for p in paths], None


def plan(checker: Checker, store: CheckpointStore, memory: Memory, *, allow_fresh_start: bool,
         on_incompatible: str) -> tuple[list[Verdict], ResumePlan]:
    """Verify the candidates (and a pending warm start's weights) and decide."""
    candidates = store.candidates()
    warm = [Path(memory.warm_weights)] if memory.warm_weights and Path(memory.warm_weights).is_file() else []
    verdicts, net_error = checker.verify([*candidates, *warm])
    if net_error:
        log.warning("could not build the trainer's network to check compatibility: %s", net_error)
    warm_from = verdicts[len(candidates)] if warm else None
    verdicts = verdicts[:len(candidates)]
    return verdicts, plan_resume(verdicts, store.layout.fold_dir, had_checkpoints=memory.had_checkpoints,
                                 allow_fresh_start=allow_fresh_start, on_incompatible=on_incompatible,
                                 warm_from=warm_from)


def carry_out(plan: ResumePlan, verdicts: list[Verdict], store: CheckpointStore, memory: Memory) -> Outcome:
    """Quarantine, stage, snapshot, set aside for a warm start; the file moves the plan calls for."""
    layout = store.layout
    records: list[Record] = []
    for v in plan.quarantine:
        dst = store.quarantine(Path(v.path), v.reason())
        log.warning("checkpoint %s is damaged (%s); moved to %s", v.path, v.reason(), dst)
        records.append(Record("checkpoint_corrupt", {"path": v.path, "reason": v.reason(),
                                                     "quarantined_to": str(dst)}))
    if verdicts:
        memory = replace(memory, had_checkpoints=True)
    if plan.action == "give_up":
        bad = plan.source
        failure_record = None
        if plan.kind == "incompatible_checkpoint" and bad is not None:
            failure_record = Record("incompatible_checkpoint", {
                "path": bad.path, "epoch": bad.epoch, "missing_keys": bad.missing_keys,
                "unexpected_keys": bad.unexpected_keys, "shape_mismatches": bad.shape_mismatches,
                "hints": bad.hints})
            log.error("%s", incompatibility_report(bad))
        return Outcome(memory, records, failure=(plan.kind, plan.message), failure_record=failure_record)
    if plan.action == "fresh":
        if plan.message:
            log.warning("%s", plan.message)
            records.append(Record("fresh_start", {"reason": plan.message}))
        return Outcome(memory, records)
    src = plan.source
    assert src is not None
    if plan.action == "warm_start":
        return _warm_start(src, plan.message, store, memory, records)
    records.append(Record("checkpoint_verified", {"path": src.path, "epoch": src.epoch}))
    latest = layout.checkpoint("checkpoint_latest.pth")
    if plan.stage:
        staged = store.stage_as_latest(Path(src.path))
        log.info("resuming from %s (epoch %s), newer than what --c would load: staged as %s",
                 src.path, src.epoch, staged.name)
        records.append(Record("checkpoint_staged", {"source": src.path, "path": str(staged), "epoch": src.epoch}))
    if (plan.stage or Path(src.path) == latest) and src.epoch is not None:
        store.snapshot(latest, src.epoch)
    # the warm-started training (if any) has checkpoints of its own now
    return Outcome(replace(memory, verified_epoch=src.epoch, warm_weights=None), records, expect_epoch=src.epoch,
                   resumed_from=src.path)


def _warm_start(src: Verdict, message: str, store: CheckpointStore, memory: Memory,
                records: list[Record]) -> Outcome:
    layout: RunLayout = store.layout
    keep = layout.supervisor_dir / "warm_start" / Path(src.path).name
    if Path(src.path) != keep:  # not a repeat from the kept copy
        keep.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(Path(src.path), keep)
    # The fresh training must not meet the incompatible checkpoints (nor our snapshots of them) on its next --c.
    for path in [*layout.existing_checkpoints(), *store.snapshots()]:
        store.set_aside(path)
    log.warning("WARNING: %s", message)
    records.append(Record("warm_start", {"path": src.path, "weights": str(keep), "epoch": src.epoch,
                                         "warning": message}))
    return Outcome(replace(memory, warm_weights=str(keep)), records, pretrained=str(keep))


def incompatibility_report(v: Verdict, limit: int = 20) -> str:
    """A key-by-key diagnosis for the log."""
    lines = [f"checkpoint {v.path} (epoch {v.epoch}) does not fit the network the trainer builds:"]
    for title, items in (("missing in the checkpoint", v.missing_keys), ("unexpected in the checkpoint",
                                                                          v.unexpected_keys)):
        if items:
            lines.append(f"  {len(items)} key(s) {title}: " + ", ".join(items[:limit])
                         + (" ..." if len(items) > limit else ""))
    for key, ck, net in v.shape_mismatches[:limit]:
        lines.append(f"  shape of {key}: checkpoint {ck}, network {net}")
    lines += [f"  hint: {h}" for h in v.hints]
    if warm_start_blockers(v):
        lines.append("  The checkpoint is untouched. Restore the trainer/plans it was written with; a warm start "
                     "(-pretrained_weights) cannot help, nnU-Net needs every key outside seg_layers to match.")
    else:
        lines.append("  The checkpoint is untouched. Restore the trainer/plans it was written with, or set "
                     "checkpoint.on_incompatible: warm_start to start over from its weights.")
    return "\n".join(lines)

"""Everything before a trainer starts, off the main thread: verify its checkpoints (ahead, while the previous
attempt trained, and the rest during the backoff), carry out the resume plan, wait for the GPU's memory.

The runner calls `work(...)` from a job thread and applies the answer on its main thread (`applied`); verdicts
found ahead arrive as queue items (`post`) and are applied there too (`verified`). Nothing here signals a process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from supervisor.checkpoints import prepare
from supervisor.checkpoints import settings as resume_settings
from supervisor.checkpoints.ahead import AheadVerifier
from supervisor.checkpoints.fingerprint import network_fingerprint
from supervisor.checkpoints.plan import ResumePlan
from supervisor.checkpoints.store import CheckpointStore
from supervisor.checkpoints.verdict import Verdict
from supervisor.checkpoints.verify import VerdictCache, context_key, expectations, network_request
from supervisor.command import helper_env
from supervisor.context import RunContext
from supervisor.core.messages import Event, LaunchFailed, Prepared, Record
from supervisor.trainer.protocol import BATCH_SIZE_VAR, CONTEXT_VAR, WRITTEN_VAR

log = logging.getLogger("nnunet_supervise")


@dataclass(frozen=True)
class VerifiedAhead:
    """From the ahead verifier's thread: verdicts on checkpoints the trainer just wrote (their cache is filled)."""

    verdicts: list[Verdict]


class Launcher:
    """Prepares each attempt's checkpoints; remembers what the run knows about them (state.json)."""

    def __init__(self, ctx: RunContext, post: Callable[[VerifiedAhead], object]) -> None:
        self.ctx, self.post = ctx, post
        cfg = ctx.config
        self.store = CheckpointStore(ctx.layout, cfg.checkpoint.snapshots)
        self.checker = prepare.Checker(
            expectations(ctx), network_request(ctx, cache=ctx.layout.supervisor_dir / "network-shapes.json"),
            helper_env(ctx), VerdictCache(),
            written=ctx.layout.supervisor_dir / "written.json" if cfg.cooperative.enabled else None)
        self.ahead = AheadVerifier(self._verify_ahead)
        self.memory = prepare.Memory()
        self.expect_epoch: int | None = None  # the epoch the prepared attempt must resume at
        self.resumed_from: str | None = None  # the verified checkpoint it resumes from
        self.verified_ahead: list[dict[str, Any]] = []  # the newest ahead verdicts, for state.json
        self._verifying: tuple[threading.Thread, list[tuple[list[Verdict], ResumePlan]]] | None = None

    def trust_env(self) -> dict[str, str]:
        """Cooperative mode: where the trainer records what it writes, and the verification context it copies into
        each record (the network's fingerprint and what the run expects, now): a relaunch trusts a checkpoint that
        still matches its record without a torch probe."""
        c = self.checker
        context = context_key(c.expect, c.network, c.env) if c.written is not None else None
        if c.written is None or context is None:
            return {}
        return {WRITTEN_VAR: str(c.written), CONTEXT_VAR: context}

    def remember(self, previous: dict[str, Any]) -> None:
        """What the previous supervisor of this run knew: the checkpoints it resumed from, a pending warm start."""
        verified, warm = previous.get("verified_epoch"), previous.get("warm_start_weights")
        verified = verified if isinstance(verified, int) and not isinstance(verified, bool) else None
        self.memory = prepare.Memory(had_checkpoints=verified is not None, verified_epoch=verified,
                                     warm_weights=warm if isinstance(warm, str) else None)

    # ---- verification ahead ----

    def start(self) -> None:
        self.ahead.start()

    def stop(self) -> None:
        self.ahead.stop()

    def written(self, paths: list[Path]) -> None:
        """The trainer (re)wrote these checkpoints: verify them in the background."""
        self.ahead.submit(paths)

    def _verify_ahead(self, paths: list[Path]) -> None:
        """In the ahead verifier's thread: verify (which fills the cache) and tell the main loop."""
        verdicts, _ = self.checker.verify(paths, nice=True)
        self.post(VerifiedAhead(verdicts))

    def verified(self, verdicts: list[Verdict]) -> None:
        """On the main thread: remember the newest verdicts; say at once when a whole file cannot be resumed."""
        for v in verdicts:
            # An early word about a whole file that cannot be resumed (NaN weights, a network that does not fit);
            # the relaunch quarantines or stops on it, as for any checkpoint. A torn zip is left unsaid: plain
            # nnU-Net rewrites checkpoints in place, so one may still be being written.
            if v.structure_ok and not v.ok and Path(v.path).exists():  # gone since: nnU-Net removes latest at the end
                log.warning("checkpoint %s as just written is not usable for a resume: %s", v.path, v.reason())
        self.verified_ahead = [{"path": v.path, "epoch": v.epoch, "ok": v.ok} for v in verdicts]

    # ---- before a launch ----

    def start_verifying(self) -> None:
        """Verify in the background while the backoff runs; the launch's work collects the result."""
        box: list[tuple[list[Verdict], ResumePlan]] = []
        thread = threading.Thread(target=lambda: box.append(self._verify_now()), name="verify", daemon=True)
        thread.start()
        self._verifying = (thread, box)

    def work(self, resume: bool, gpu_wait: Callable[[], object],
             remedies: tuple[tuple[str, str], ...] = ()) -> Callable[[], tuple[prepare.Outcome, Event]]:
        """What the launch job runs: the resume plan carried out, the training setup compared with the checkpoint's,
        the GPU's memory awaited; Prepared or LaunchFailed."""
        memory = self.memory
        check = bool(resume or self.store.candidates())

        def run() -> tuple[prepare.Outcome, Event]:
            outcome = prepare.Outcome(memory)
            weights = self.ctx.config.nnunet.pretrained_weights
            if not check and weights is not None:  # a fresh start: the user's pretrained weights, as nnU-Net's flag
                outcome = replace(outcome, pretrained=str((self.ctx.config_path.parent / weights).resolve()))
            if check:
                verdicts, plan = self._take_verified()
                outcome = prepare.carry_out(plan, verdicts, self.store, memory)
                if outcome.failure is not None:
                    kind, message = outcome.failure
                    return outcome, LaunchFailed(message, kind, outcome.failure_record)
            # training finished (checkpoint_final.pth, verified above): only its final validation is left
            validate = outcome.pretrained is None and self.ctx.layout.checkpoint("checkpoint_final.pth").is_file()
            if not validate:
                stopped = self._guard_settings(outcome, dict(remedies))
                if isinstance(stopped, LaunchFailed):
                    return outcome, stopped
                if stopped is not None:
                    outcome = replace(outcome, records=[*outcome.records, stopped])
            gpu_wait()
            # every relaunch uses --c (on an emptied folder nnU-Net then starts over, which the plan allowed)
            return outcome, Prepared(resume and outcome.pretrained is None, outcome.pretrained, validate)

        return run

    def _guard_settings(self, outcome: prepare.Outcome, remedies: dict[str, str]) -> LaunchFailed | Record | None:
        """Before a --c: the trainer's settings and the fold's split as the checkpoint was trained with, against now.
        A change stops the launch (checkpoint.on_changed_settings: stop) or is recorded and allowed (continue).
        Every launch that trains records what it trains with (supervisor/settings.json)."""
        layout, nn = self.ctx.layout, self.ctx.config.nnunet
        current = self._current_settings()
        if BATCH_SIZE_VAR in remedies:  # the opted-in smaller batch is a remedy of ours, not a changed setting
            current["batch_size"] = remedies[BATCH_SIZE_VAR]
        split = resume_settings.split_identity(self.ctx.paths.preprocessed / self.ctx.dataset_name
                                               / "splits_final.json", nn.fold)
        if split is not None:
            current["split"] = split
        record_file = layout.supervisor_dir / "settings.json"
        said: Record | None = None
        if outcome.resumed_from is not None:
            recorded = {**resume_settings.read_record(record_file),
                        **resume_settings.from_debug(layout.fold_dir / "debug.json")}
            changes = resume_settings.compare(recorded, current)
            if not set(recorded) & set(current):
                log.info("the training setup of %s could not be compared with the trainer's (no debug.json or "
                         "settings record of its training, or the trainer's network not built)",
                         Path(outcome.resumed_from).name)
            if changes:
                what = resume_settings.describe(changes)
                fields = {"changes": changes, "checkpoint": outcome.resumed_from}
                if self.ctx.config.checkpoint.on_changed_settings == "stop":
                    message = (f"the training setup changed since {Path(outcome.resumed_from).name} was trained "
                               f"({what}): --c would go on under the new settings ({self._consequence(changes)}); "
                               f"not launching. {resume_settings.ADVICE}")
                    return LaunchFailed(message, "settings_changed",
                                        Record("settings_changed", {**fields, "advice": resume_settings.ADVICE}))
                log.warning("the training setup changed since the checkpoint (%s); going on as "
                            "checkpoint.on_changed_settings: continue says", what)
                said = Record("settings_changed", {**fields, "continued": True})
        if current:
            try:
                resume_settings.write_record(record_file, current)
            except OSError as exc:
                log.warning("could not record the training settings in %s: %s", record_file, exc)
        return said

    @staticmethod
    def _consequence(changes: list[dict[str, Any]]) -> str:
        names = {c["name"] for c in changes}
        out = []
        if names & {"num_epochs", "initial_lr"}:
            out.append("nnU-Net's PolyLR learning rate jumps to the new schedule at the saved epoch")
        if "split" in names:
            out.append("cases change sides between training and validation, so the validation is no longer held out")
        if names & {"batch_size", "patch_size", "plans"}:
            out.append("it is another training from here on")
        return "; ".join(out)

    def _current_settings(self) -> dict[str, str]:
        """What the configured trainer sets now: kept by the checkpoint probe beside the network's shapes, for the
        fingerprint of the plans and trainer code of now ({} where no probe built it)."""
        net = self.checker.network
        cache = net.get("cache") if net else None
        if not net or not cache:
            return {}
        try:
            fingerprint = network_fingerprint(dict(net), self.checker.env.get("nnUNet_extTrainer", ""))
        except (OSError, ValueError, KeyError):
            return {}
        return resume_settings.built_settings(Path(cache), fingerprint)

    def applied(self, outcome: prepare.Outcome) -> None:
        """On the main thread, once the launch job answered."""
        self.memory, self.expect_epoch = outcome.memory, outcome.expect_epoch
        self.resumed_from = outcome.resumed_from

    def _take_verified(self) -> tuple[list[Verdict], ResumePlan]:
        verifying, self._verifying = self._verifying, None
        if verifying is not None:
            thread, box = verifying
            thread.join()
            if box:
                return box[0]
        return self._verify_now()

    def _verify_now(self) -> tuple[list[Verdict], ResumePlan]:
        self.ahead.settle(timeout_s=600)  # reuse a running ahead verification's answer rather than race it
        cfg = self.ctx.config.checkpoint
        return prepare.plan(self.checker, self.store, self.memory, allow_fresh_start=cfg.allow_fresh_start,
                            on_incompatible=cfg.on_incompatible)

"""Everything before a trainer starts, off the main thread: verify its checkpoints (ahead, while the previous
attempt trained, and the rest during the backoff), carry out the resume plan, wait for the GPU's memory.

The runner calls `work(...)` from a job thread and applies the answer on its main thread (`applied`); verdicts
found ahead arrive as queue items (`post`) and are applied there too (`verified`). Nothing here signals a process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.checkpoints import prepare
from supervisor.checkpoints.ahead import AheadVerifier
from supervisor.checkpoints.plan import ResumePlan
from supervisor.checkpoints.store import CheckpointStore
from supervisor.checkpoints.verdict import Verdict
from supervisor.checkpoints.verify import VerdictCache, expectations, network_request
from supervisor.command import helper_env
from supervisor.context import RunContext
from supervisor.core.messages import Event, LaunchFailed, Prepared

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
            helper_env(ctx), VerdictCache())
        self.ahead = AheadVerifier(self._verify_ahead)
        self.memory = prepare.Memory()
        self.expect_epoch: int | None = None  # the epoch the prepared attempt must resume at
        self.verified_ahead: list[dict[str, Any]] = []  # the newest ahead verdicts, for state.json
        self._verifying: tuple[threading.Thread, list[tuple[list[Verdict], ResumePlan]]] | None = None

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
            if v.structure_ok and not v.ok:
                log.warning("checkpoint %s as just written is not usable for a resume: %s", v.path, v.reason())
        self.verified_ahead = [{"path": v.path, "epoch": v.epoch, "ok": v.ok} for v in verdicts]

    # ---- before a launch ----

    def start_verifying(self) -> None:
        """Verify in the background while the backoff runs; the launch's work collects the result."""
        box: list[tuple[list[Verdict], ResumePlan]] = []
        thread = threading.Thread(target=lambda: box.append(self._verify_now()), name="verify", daemon=True)
        thread.start()
        self._verifying = (thread, box)

    def work(self, resume: bool, gpu_wait: Callable[[], object]) -> Callable[[], tuple[prepare.Outcome, Event]]:
        """What the launch job runs: the resume plan carried out, the GPU's memory awaited; Prepared or
        LaunchFailed."""
        memory = self.memory
        check = bool(resume or self.store.candidates())

        def run() -> tuple[prepare.Outcome, Event]:
            outcome = prepare.Outcome(memory)
            if check:
                verdicts, plan = self._take_verified()
                outcome = prepare.carry_out(plan, verdicts, self.store, memory)
                if outcome.failure is not None:
                    kind, message = outcome.failure
                    return outcome, LaunchFailed(message, kind, outcome.failure_record)
            gpu_wait()
            # every relaunch uses --c (on an emptied folder nnU-Net then starts over, which the plan allowed)
            return outcome, Prepared(resume and outcome.pretrained is None, outcome.pretrained)

        return run

    def applied(self, outcome: prepare.Outcome) -> None:
        """On the main thread, once the launch job answered."""
        self.memory, self.expect_epoch = outcome.memory, outcome.expect_epoch

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

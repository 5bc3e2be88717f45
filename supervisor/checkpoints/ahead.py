"""Verify checkpoints while the trainer runs, as they are written, so that a relaunch waits for nothing.

After a crash the relaunch needs a verdict on every candidate checkpoint. The content and compatibility probe
takes seconds (a subprocess importing torch and nnU-Net); run when the trainer dies, it adds those seconds to the
backoff. Run here, in the background when a checkpoint changes, its answer is in the cache by then and the
relaunch pays only the structural check (milliseconds, which proves the bytes are the ones probed).

One background thread, one probe at a time, niced; changes are coalesced (the newest set of files wins) and a
file is only looked at once it has been quiet for `settle_s` (plain nnU-Net rewrites checkpoints in place). After
each probe the thread rests `rest_factor` times as long as the probe took, so the verification never takes more
than a fixed share of a core from the training.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class AheadVerifier:
    """Runs `verify(paths)` (which fills the verdict cache) in the background when checkpoints change."""

    def __init__(self, verify: Callable[[list[Path]], object], settle_s: float = 2.0, rest_factor: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._verify = verify
        self.settle_s, self.rest_factor, self.clock = settle_s, rest_factor, clock
        self._cond = threading.Condition()
        self._pending: list[Path] = []
        self._since = 0.0  # when the pending set last changed
        self._busy = False
        self._stopped = False
        self._rest_until = 0.0
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="verify-ahead", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def submit(self, paths: Sequence[Path]) -> None:
        """These checkpoints changed: verify them (with whatever else is pending) once they have settled."""
        with self._cond:
            self._pending = sorted({*self._pending, *paths})
            self._since = self.clock()
            self._cond.notify_all()

    def settle(self, timeout_s: float) -> bool:
        """Wait until no verification is running (a relaunch then reuses its answer instead of probing the same
        files beside it); drops what is pending. False if one was still running at the timeout."""
        deadline = self.clock() + timeout_s
        with self._cond:
            self._pending = []
            while self._busy:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _next(self) -> list[Path] | None:
        """Block until a settled batch is due (None: stopped)."""
        with self._cond:
            while not self._stopped:
                now = self.clock()
                due = max(self._since + self.settle_s, self._rest_until)
                if self._pending and now >= due:
                    batch, self._pending = self._pending, []
                    self._busy = True
                    return batch
                self._cond.wait(max(0.05, due - now) if self._pending else None)
            return None

    def _run(self) -> None:
        while (batch := self._next()) is not None:
            started = self.clock()
            try:
                self._verify([p for p in batch if p.is_file()])
            except Exception:  # the ahead check is an optimisation: the relaunch verifies anyway
                log.debug("verifying %s ahead failed", [str(p) for p in batch], exc_info=True)
            finally:
                took = self.clock() - started
                with self._cond:
                    self.runs += 1
                    self._busy = False
                    self._rest_until = self.clock() + self.rest_factor * took
                    self._cond.notify_all()

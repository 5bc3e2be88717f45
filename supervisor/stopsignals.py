"""The signals that ask a supervisor (fold, experiment, prediction pipeline) to stop resumably, and one way to catch
them: systemd and Kubernetes send SIGTERM, a terminal SIGINT or SIGHUP, SLURM's --signal lead SIGUSR1 by default."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


@contextmanager
def stop_signals(handler: Callable[[str], None]) -> Iterator[None]:
    """While inside, each stop signal calls handler with its name (SIGTERM, ...); the old handlers again after.
    The handler runs in the main thread between two bytecodes: it should only record or enqueue."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

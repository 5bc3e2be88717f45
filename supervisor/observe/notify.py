"""Notifications through apprise (an optional extra: `pip install 'nnunet-supervise[notify]'`).

The runner's event log tells `Notifications.on_event` every event; the ones a person should hear about are sent
from a background thread, so a slow or failing notification service never holds up or breaks supervision.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from supervisor.core.classify import NOT_FAILURES

log = logging.getLogger(__name__)

KINDS = ("give_up", "finished", "stall", "gpu_fault", "repeated_failures", "disk_full")


def apprise_sender(urls: list[str]) -> Callable[[str, str], bool]:
    import apprise

    app = apprise.Apprise()
    for url in urls:
        app.add(url)
    return lambda title, body: bool(app.notify(title=title, body=body))


class Notifications:
    def __init__(self, run: str, urls: list[str], kinds: list[str], repeated_failures: int = 3,
                 sender: Callable[[str, str], bool] | None = None) -> None:
        self.run, self.kinds, self.threshold = run, set(kinds), repeated_failures
        # what a finished stage says (its words: a prediction counts cases, not epochs)
        self.finished_words: Callable[[Any], str] = lambda n: f"training finished after {n} epochs"
        self._send = sender or apprise_sender(urls)
        self._failures_in_row = 0
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, name="notify", daemon=True)
        self._thread.start()

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        if event == "exit":
            failed = fields.get("classification") not in NOT_FAILURES
            self._failures_in_row = self._failures_in_row + 1 if failed else 0
            if failed and self._failures_in_row == self.threshold:
                self._post("repeated_failures", f"{self.threshold} failures in a row, the last: "
                                                f"{fields.get('classification')} ({fields.get('summary', '')})")
            return
        if event == "backoff" and fields.get("progress"):
            self._failures_in_row = 0
        message = fields.get("message") or fields.get("summary") or ""
        if event == "give_up":
            self._post("give_up", f"gave up ({fields.get('reason')}): {message}")
        elif event == "finished" and not fields.get("already"):
            self._post("finished", self.finished_words(fields.get("epochs")))
        elif event == "stall":
            self._post("stall", f"attempt {fields.get('attempt')} hung and was restarted: {message}")
        elif event == "gpu_fault" and fields.get("hardware"):
            self._post("gpu_fault", f"GPU hardware fault: {message}")
        elif event == "disk_full":
            self._post("disk_full", f"disk full in {fields.get('path')}: waiting for space "
                                    f"({fields.get('free_bytes')} bytes free, {fields.get('needed_bytes')} needed)")

    def _post(self, kind: str, body: str) -> None:
        if kind in self.kinds:
            self._queue.put((f"nnunet-supervise on {socket.gethostname()}: {kind}", f"{self.run}\n{body}"))

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if not self._send(*item):
                    log.warning("notification %r was not delivered", item[0])
            except Exception as exc:  # never let a notification service break supervision
                log.warning("notification %r failed: %s", item[0], exc)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (bounded), e.g. the final give_up or finished."""
        self._queue.put(None)
        self._thread.join(timeout_s)

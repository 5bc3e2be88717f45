"""state.json: the run's current state, written atomically (tmp + fsync + rename + fsync of the folder)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from supervisor.atomic import atomic_write_text

log = logging.getLogger(__name__)


class StateStore:
    """Read and write one state.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: str | None = None
        self._failing: str | None = None

    def load(self) -> dict[str, Any]:
        """The last saved state, or {} when there is none or it is unreadable."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, state: dict[str, Any]) -> None:
        """Write state plus `updated_ts`, unless nothing but the time changed since the last write."""
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        if text == self._written:
            return  # the supervisor saves on every tick; unchanged state costs no write, fsync or inotify event
        body = json.dumps({**state, "updated_ts": time.time()}, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write_text(self.path, body)
        except OSError as exc:  # a full disk must not kill the supervisor: the old state.json stays, retried later
            if self._failing is None:
                log.warning("could not write %s (%s); the previous one stays until it can be", self.path, exc)
            self._failing = str(exc)
            return
        self._written, self._failing = text, None

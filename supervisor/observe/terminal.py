"""`run` on a terminal: a live status line (epoch progress bar, ETA, attempt) under the log lines.

Not on a terminal (systemd, SLURM, a pipe) nothing of this is used: plain timestamped log lines only.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.text import Text

from supervisor.observe.progress import duration, eta_s

BAR = 24


def status_text(s: dict[str, Any]) -> str:
    """One line: state, attempt, a bar of epochs done out of the trainer's total, ETA, checkpoint age."""
    parts = [f"{s['state']}", f"attempt {s['attempt']}"]
    if "progress" in s:  # a stage other than training says its own (cases preprocessed, predicted)
        return " · ".join([parts[0], str(s["progress"])])
    epoch, total = s.get("epoch"), s.get("num_epochs")
    if epoch is not None and total:
        done = min(max(epoch, 0), total)
        filled = round(BAR * done / total)
        parts.append(f"epoch {epoch}/{total} [{'#' * filled}{'.' * (BAR - filled)}] {100 * done / total:.0f}%")
        eta = eta_s(epoch, total, s.get("epoch_times") or [])
        if eta is not None and s["state"] == "running":
            parts.append(f"ETA {duration(eta)}")
    elif epoch is not None:
        parts.append(f"epoch {epoch}")
    age = s.get("checkpoint_age_s")
    parts.append("no checkpoint yet" if age is None else f"checkpoint {duration(age)} ago")
    return " · ".join(parts)


class TerminalStatus:
    """A rich Live line; log records are printed above it through the same console."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = Live(Text(""), console=self.console, refresh_per_second=2, transient=True)
        self.handler = RichHandler(console=self.console, show_path=False, markup=False, log_time_format="%H:%M:%S")

    def __enter__(self) -> TerminalStatus:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def update(self, status: dict[str, Any]) -> None:
        self.live.update(Text(status_text(status), style="bold"))

    def install_logging(self, level: int) -> None:
        logging.basicConfig(level=level, handlers=[self.handler], format="%(message)s", force=True)

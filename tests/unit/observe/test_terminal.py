"""The live status line of `run` on a terminal (a rich console forced to be a terminal, writing to a buffer)."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from rich.console import Console

from supervisor.daemon.runner import Runner
from supervisor.observe.terminal import TerminalStatus, status_text
from tests.conftest import fake_spawn, make_ctx


def test_status_text_has_a_bar_an_eta_and_the_checkpoint_age() -> None:
    line = status_text({"state": "running", "attempt": 2, "epoch": 250, "num_epochs": 1000,
                        "epoch_times": [120.0, 100.0, 110.0], "checkpoint_age_s": 100.0})
    assert line == ("running · attempt 2 · epoch 250/1000 [######..................] 25% · ETA 22.9 h · "
                    "checkpoint 2 min ago")
    assert status_text({"state": "starting", "attempt": 1, "epoch": None, "checkpoint_age_s": None}) == (
        "starting · attempt 1 · no checkpoint yet")


@pytest.mark.process
def test_the_runner_drives_the_live_line_and_logs_print_above_it(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    ctx = make_ctx(tmp_path, [{"epochs": [0, 3], "outcome": "1"}, {"epochs": [3, 5], "outcome": "finish"}])
    with TerminalStatus(console) as term:
        term.install_logging(logging.INFO)
        assert Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0, on_status=term.update).run() == 0
        term.live.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # without the colours
    assert "attempt 2 started" in text  # a log record, through the same console
    assert "finished · attempt 2 · epoch 4 · checkpoint" in text  # the live line (refreshed at 2 Hz)
    logging.basicConfig(force=True)  # leave logging as pytest had it

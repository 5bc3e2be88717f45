"""The one-line summary of a run."""

from __future__ import annotations

from supervisor.observe.progress import status_line


def test_status_line_reads_like_a_person_wrote_it() -> None:
    assert status_line("running", 2, 5, 1000, 200.0) == "running: attempt 2, epoch 5/1000, last checkpoint 3 min ago"
    assert status_line("starting", 1, None, None, None) == "starting: attempt 1, no checkpoint yet"

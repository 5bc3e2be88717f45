"""Stack dumps of a hung tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.daemon.stacks import dump_stacks, process_state


def test_dump_stacks_without_py_spy_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import supervisor.daemon.stacks as hb

    monkeypatch.setattr(hb, "_py_spy", lambda: None)
    note = dump_stacks([1], tmp_path / "stall-1.txt")
    assert note == "py-spy unavailable: no stack dump taken"
    assert "py-spy is not installed" in (tmp_path / "stall-1.txt").read_text()
    assert process_state(1) in "SRDTZI?"

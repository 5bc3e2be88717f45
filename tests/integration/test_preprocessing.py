"""Supervised preprocessing on the engine, with real nnU-Net planning and preprocessing of the tiny dataset: killed
midway it is relaunched and finishes without redoing the cases already written; a damaged case that counts as
written is set aside and made again; a complete, verified dataset is not touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from supervisor.demo.dataset import DATASET_NAME, write_raw_dataset
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CASES = 6


def preprocess(config: Path) -> subprocess.Popen[bytes]:
    out = open(config.with_suffix(".supervisor.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "supervisor", "preprocess", str(config)], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_preprocessing_killed_midway_finishes_keeping_its_cases_and_redoes_a_damaged_one(tmp_path: Path) -> None:
    write_raw_dataset(tmp_path / "raw", CASES)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "nnunet": {"dataset": DATASET_NAME, "configuration": "3d_fullres", "device": "cpu"},
        "paths": {"nnUNet_raw": "raw", "nnUNet_preprocessed": "pre", "nnUNet_results": "res"},
        "restart": {"backoff_initial_s": 1, "backoff_max_s": 2},
        # one process: the cases come one at a time, so the kill lands between the first and the last
        "preprocess": {"configurations": ["3d_fullres", "2d"], "num_processes": 1},
    }))
    dataset = tmp_path / "pre" / DATASET_NAME
    run_dir = dataset / "supervisor"
    fullres = dataset / "nnUNetPlans_3d_fullres"

    def written() -> int:
        return len(list(fullres.glob("*.pkl"))) if fullres.is_dir() else 0

    sup = preprocess(config)
    try:
        wait_for(lambda: written() >= 1, 240, "the first preprocessed case", interval_s=0.1)
        pid = StateStore(run_dir / "state.json").load().get("pid")
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)  # the shim's main process; its pool's worker is left to the supervisor
        killed_at = written()
        assert sup.wait(timeout=300) == 0, config.with_suffix(".supervisor.log").read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    assert killed_at < CASES
    events = list(read_events(run_dir / "events.jsonl"))
    exits = [e for e in events if e["event"] == "exit"]
    assert [(e["attempt"], e["classification"]) for e in exits] == [(1, "killed_by_signal"), (2, "finished")]
    assert exits[0]["phase"] == "preprocessing"
    second = (run_dir / "attempt-2.log").read_text()
    assert "nnunet-supervise preprocess: fingerprint kept" in second and "plans kept" in second
    kept = re.search(r"configuration 3d_fullres: (\d+) of 6 cases already preprocessed, (\d+) to go", second)
    assert kept is not None and int(kept.group(1)) >= killed_at >= 1, second
    # only the cases not written before the kill are preprocessed again
    redone = second[kept.end():second.index("configuration 2d")].count("nnunet-supervise preprocess: preprocessed ")
    assert redone == int(kept.group(2)) == CASES - int(kept.group(1))
    state = StateStore(run_dir / "state.json").load()
    assert state["state"] == "finished" and state["preprocess"]["cases_done"] == state["preprocess"]["cases_total"] \
        == 2 * CASES

    # a case with its .pkl (so the shim counts it as done) whose array was cut afterwards: set aside, made again
    victim = fullres / "tiny_002.b2nd"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    untouched = {p.name: p.stat().st_mtime_ns for p in fullres.iterdir() if not p.name.startswith("tiny_002")}
    t0 = time.monotonic()
    assert preprocess(config).wait(timeout=300) == 0
    took = time.monotonic() - t0
    events = list(read_events(run_dir / "events.jsonl"))
    moved = [e for e in events if e["event"] == "case_quarantined"]
    assert [(e["configuration"], e["case"]) for e in moved] == [("3d_fullres", "tiny_002")]
    quarantined = Path(moved[0]["quarantined_to"])
    assert (quarantined / "tiny_002.b2nd").read_bytes() == data[: len(data) // 2]  # kept as it was, not deleted
    third = (run_dir / "attempt-3.log").read_text()
    assert "configuration 3d_fullres: 5 of 6 cases already preprocessed, 1 to go" in third
    assert "configuration 2d: 6 of 6 cases already preprocessed, 0 to go" in third
    assert {p.name: p.stat().st_mtime_ns for p in fullres.iterdir() if not p.name.startswith("tiny_002")} == untouched
    assert victim.stat().st_size > len(data) // 2

    # complete and verified: nothing is launched
    launches = sum(1 for e in read_events(run_dir / "events.jsonl") if e["event"] == "launch")
    assert preprocess(config).wait(timeout=120) == 0
    events = list(read_events(run_dir / "events.jsonl"))
    assert sum(1 for e in events if e["event"] == "launch") == launches
    assert events[-1]["event"] == "finished" and events[-1].get("already") is True
    print(f"redoing one damaged case took {took:.1f} s")

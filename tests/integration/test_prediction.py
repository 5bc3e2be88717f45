"""Supervised prediction on the engine, with real nnUNetv2_predict on the fold trained once per session: killed midway
it is relaunched with --continue_prediction and predicts only the cases not written; a garbage input file that
stops nnU-Net every time is found by trying it alone and set aside, the rest predicted (exit 1 naming it); an output
torn after the fact is quarantined and predicted again (nnU-Net's own --continue_prediction would count it as
done); a complete, verified prediction launches nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore
from tests.conftest import copy_run, wait_for

pytestmark = pytest.mark.integration


def predict(config: Path) -> subprocess.Popen[bytes]:
    out = open(config.with_suffix(".predict.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "supervisor", "predict", str(config)], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_prediction_killed_midway_continues_a_poison_case_is_set_aside_and_a_torn_output_is_predicted_again(
        write_config: Any, tmp_path: Path, tiny_dataset: tuple[Path, Path], interrupted_training: Path) -> None:
    raw, _ = tiny_dataset
    copy_run(interrupted_training, tmp_path / "results")
    images = tmp_path / "imagesTs"
    images.mkdir()
    for p in sorted((raw / "Dataset901_Tiny" / "imagesTr").glob("*_0000.nii.gz"))[:5]:  # five: enough to kill midway
        (images / p.name).symlink_to(p)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    garbage = images / "zz_garbage_0000.nii.gz"  # sorts last: the good cases come first in every attempt
    garbage.write_bytes(os.urandom(4096))
    out = tmp_path / "pred"
    config: Path = write_config(
        nnunet={"env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_npp": "1", "nnUNet_nps": "1"}},
        # the interrupted fold has no checkpoint_final.pth; its latest is a real model all the same
        predict={"input": str(images), "output": str(out), "checkpoint": "checkpoint_latest.pth",
                 "extra_args": ["--disable_tta"]})
    run_dir = out / "supervisor"

    def written() -> int:
        return len(list(out.glob("*.nii.gz")))

    sup = predict(config)
    try:
        wait_for(lambda: written() >= 2, 240, "the first predictions", interval_s=0.1)
        pid = StateStore(run_dir / "state.json").load().get("pid")
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        at_kill = written()
        # incomplete: every good case predicted, the garbage one set aside and named
        assert sup.wait(timeout=600) == 1, config.with_suffix(".predict.log").read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    events = list(read_events(run_dir / "events.jsonl"))
    exits = [e for e in events if e["event"] == "exit"]
    assert exits[0]["classification"] == "killed_by_signal"
    launch = [e for e in events if e["event"] == "launch"][1]
    assert "--continue_prediction" in launch["argv"] and "--disable_tta" in launch["argv"]
    second = (run_dir / "attempt-2.log").read_text()
    todo = re.search(r"That's (\d+) cases\.", second)
    # fewer than all: the outputs verified before the kill are kept (one written at the kill may be torn: quarantined)
    assert todo is not None and int(todo.group(1)) < len(cases) + 1 and at_kill >= 2, second[-2000:]
    assert [e["case"] for e in events if e["event"] == "case_failed"] == ["zz_garbage"]
    assert events[-1]["event"] == "give_up" and events[-1]["reason"] == "cases_failed" \
        and "zz_garbage" in events[-1]["message"]
    assert sorted(p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz")) == cases
    assert garbage.exists() and len(list(images.iterdir())) == len(cases) + 1  # the user's folder untouched
    state = StateStore(run_dir / "state.json").load()
    assert state["predict"]["cases_total"] == len(cases) + 1 and state["predict"]["cases_failed"] == ["zz_garbage"]
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(config), "--json"],
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout)["predict"]["cases_failed"] == ["zz_garbage"]
    garbage.unlink()  # the user removes the bad file

    # a torn output (as a predictor killed mid-write leaves it): nnU-Net's --continue_prediction would skip it
    victim = out / f"{cases[3]}.nii.gz"
    # a SIGKILL may itself leave an output torn, which the relaunch quarantined already: only what follows counts
    before = sum(1 for e in read_events(run_dir / "events.jsonl") if e["event"] == "output_corrupt")
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert predict(config).wait(timeout=300) == 0
    events = list(read_events(run_dir / "events.jsonl"))
    corrupt = [e for e in events if e["event"] == "output_corrupt"][before:]
    assert [e["path"] for e in corrupt] == [str(victim)]
    assert Path(corrupt[0]["quarantined_to"]).read_bytes() == data[: len(data) // 2]  # kept, not deleted
    latest = StateStore(run_dir / "state.json").load()["attempt"]
    assert "That's 1 cases." in (run_dir / f"attempt-{latest}.log").read_text()
    assert victim.stat().st_size > len(data) // 2

    # complete and verified: nothing is launched
    launches = sum(1 for e in events if e["event"] == "launch")
    assert predict(config).wait(timeout=120) == 0
    events = list(read_events(run_dir / "events.jsonl"))
    assert sum(1 for e in events if e["event"] == "launch") == launches
    assert events[-1]["event"] == "finished" and events[-1].get("already") is True

    # in two parts at once (predict.parts: 2), into a new folder: each part a supervisor of its own with its own run
    # directory, the cases cut between them; then the whole verifies what they made (their verdicts taken in) and
    # launches nothing
    split = tmp_path / "pred-parts"
    config = write_config(
        nnunet={"env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_npp": "1", "nnUNet_nps": "1"}},
        predict={"input": str(images), "output": str(split), "checkpoint": "checkpoint_latest.pth",
                 "extra_args": ["--disable_tta"], "parts": 2})
    assert predict(config).wait(timeout=300) == 0, config.with_suffix(".predict.log").read_text()[-3000:]
    whole = split / "supervisor"
    mine = []
    for k in range(2):
        part_dir = whole / f"part-{k}-of-2"
        state = StateStore(part_dir / "state.json").load()
        assert state["state"] == "finished", (whole / f"part-{k}-of-2.log").read_text()[-2000:]
        mine.append(state["predict"]["cases_total"])
        assert any(e["event"] == "launch" for e in read_events(part_dir / "events.jsonl"))
    assert sorted(mine) == [len(cases) // 2, len(cases) - len(cases) // 2]
    assert not any(e["event"] == "launch" for e in read_events(whole / "events.jsonl"))
    assert sorted(p.name[: -len(".nii.gz")] for p in split.glob("*.nii.gz")) == cases
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(config), "--json"],
                            capture_output=True, text=True, check=True)
    shown = json.loads(status.stdout)["predict"]
    assert shown["cases_done"] == len(cases) and [p["part"] for p in shown["parts"]] == ["0/2", "1/2"]
    report = subprocess.run([sys.executable, "-m", "supervisor", "report", str(config), "--json"],
                            capture_output=True, text=True, check=True)
    rep = json.loads(report.stdout)["predict"]
    assert rep["exit"] == "finished" and rep["cases_verified"] == len(cases), rep

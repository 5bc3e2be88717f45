"""A real one-node SLURM (started by scripts/slurm-up.sh): the rendered job is preempted mid-training with its
signal, requeues itself, resumes at the checkpoint's epoch and finishes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.checkpoints.meta import read_meta
from supervisor.context import RunContext
from tests.conftest import events_of, state_of, wait_for
from tests.integration.test_cooperative import SPARSE, first_epoch, training_logs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-up.sh")], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"no SLURM here: {r.stderr.strip()[-300:]}")


def job_field(job: str, field: str) -> str | None:
    r = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    m = re.search(rf"\b{field}=(\S+)", r.stdout)
    return m.group(1) if m else None


def test_a_preempted_array_task_requeues_alone_resumes_at_its_checkpoint_and_finishes(
        slurm_cluster: None, write_config: Any, tmp_path: Path) -> None:
    """A 2-task array (folds 0 and 1): task 1 gets the preemption signal, requeues itself alone (its sibling runs on
    undisturbed), resumes at its saved epoch and finishes; so does task 0."""
    config = write_config(nnunet={"trainer": "nnUNetTrainer_Sparse", "trainer_paths": [str(SPARSE)]},
                          cooperative={"enabled": True})
    ctx0, ctx1 = RunContext.load(config, "0"), RunContext.load(config, "1")
    out = subprocess.run([sys.executable, "-m", "supervisor", "slurm", str(config), "--submit", "--time", "00:30:00",
                          "--folds", "0-1", "--cpus", "1", "--mem", "4G"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    array = re.search(r"submitted job (\d+)", out.stdout).group(1)  # type: ignore[union-attr]
    task0, task1 = f"{array}_0", f"{array}_1"
    try:
        wait_for(lambda: (state_of(ctx1).get("epoch") or 0) >= 2 and (state_of(ctx0).get("epoch") or 0) >= 1, 300,
                 "both tasks' trainings to be under way")
        subprocess.run(["scancel", "-s", "USR1", "--batch", task1], check=True)  # what --signal=B:USR1@300 sends
        wait_for(lambda: any(e["event"] == "requeue" for e in events_of(ctx1)), 180, "the requeue")
        stopped = read_meta(ctx1.layout.fold_dir / "checkpoint_latest.pth").current_epoch
        # SLURM holds a requeued job ~2 min (BeginTime); release it at once to keep the suite short
        wait_for(lambda: job_field(task1, "JobState") == "PENDING", 120, "task 1 to be pending again")
        assert job_field(task0, "JobState") in ("RUNNING", "COMPLETED")  # the sibling was not touched
        subprocess.run(["scontrol", "update", f"JobId={task1}", "StartTime=now"], check=False)
        for task in (task0, task1):
            wait_for(lambda t=task: job_field(t, "JobState") == "COMPLETED", 600, f"{task} to finish")
    finally:
        for task in (task0, task1):
            if job_field(task, "JobState") not in ("COMPLETED", None):
                subprocess.run(["scancel", task], check=False)
    assert job_field(task1, "Restarts") == "1" and job_field(task0, "Restarts") == "0"
    evs = events_of(ctx1)
    requeue = next(e for e in evs if e["event"] == "requeue")
    assert requeue["ok"] is True and requeue["job"] == task1
    slurm = [e for e in evs if e["event"] == "slurm"]
    assert [e.get("slurm_restart_count", "0") for e in slurm] == ["0", "1"]  # logged by each incarnation
    assert "stop_requested" in [e["event"] for e in evs]
    logs = training_logs(ctx1)
    assert first_epoch(logs[-1]) == stopped  # resumed where the preempted incarnation saved
    for ctx in (ctx0, ctx1):
        assert (ctx.layout.fold_dir / "checkpoint_final.pth").exists() and state_of(ctx)["state"] == "finished"
    sibling = [e["event"] for e in events_of(ctx0)]
    assert "stop_requested" not in sibling and "requeue" not in sibling and sibling.count("launch") == 1
    assert len(training_logs(ctx0)) == 1  # one uninterrupted training
    log = next(ctx1.layout.fold_dir.parent.glob(f"slurm-*-{array}_1.out")).read_text()
    assert "restart count 1" in log  # --open-mode=append: both incarnations in one log

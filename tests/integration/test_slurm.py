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


def test_a_preempted_job_requeues_resumes_at_its_checkpoint_and_finishes(slurm_cluster: None, write_config: Any,
                                                                        tmp_path: Path) -> None:
    config = write_config(nnunet={"trainer": "nnUNetTrainer_Sparse", "trainer_paths": [str(SPARSE)]},
                          cooperative={"enabled": True})
    ctx = RunContext.load(config)
    out = subprocess.run([sys.executable, "-m", "supervisor", "slurm", str(config), "--submit", "--time", "00:30:00"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    job = re.search(r"submitted job (\d+)", out.stdout).group(1)  # type: ignore[union-attr]
    try:
        wait_for(lambda: (state_of(ctx).get("epoch") or 0) >= 2, 300, "the job's training to reach epoch 2")
        subprocess.run(["scancel", "-s", "USR1", "--batch", job], check=True)  # what --signal=B:USR1@300 sends
        wait_for(lambda: any(e["event"] == "requeue" for e in events_of(ctx)), 180, "the requeue")
        stopped = read_meta(ctx.layout.fold_dir / "checkpoint_latest.pth").current_epoch
        # SLURM holds a requeued job ~2 min (BeginTime); release it at once to keep the suite short
        wait_for(lambda: job_field(job, "JobState") == "PENDING", 120, "the job to be pending again")
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
        wait_for(lambda: job_field(job, "JobState") == "COMPLETED", 600, "the requeued job to finish")
    finally:
        if job_field(job, "JobState") not in ("COMPLETED", None):
            subprocess.run(["scancel", job], check=False)
    assert job_field(job, "Restarts") == "1"
    evs = events_of(ctx)
    requeue = next(e for e in evs if e["event"] == "requeue")
    assert requeue["ok"] is True and requeue["job"] == job
    slurm = [e for e in evs if e["event"] == "slurm"]
    assert [e.get("slurm_restart_count", "0") for e in slurm] == ["0", "1"]  # logged by each incarnation
    assert "stop_requested" in [e["event"] for e in evs]
    logs = training_logs(ctx)
    assert first_epoch(logs[-1]) == stopped  # resumed where the preempted incarnation saved
    assert (ctx.layout.fold_dir / "checkpoint_final.pth").exists()
    assert state_of(ctx)["state"] == "finished" and state_of(ctx)["slurm_job_id"] == job
    log = next(ctx.layout.fold_dir.parent.glob(f"slurm-*-{job}.out")).read_text()
    assert "restart count 1" in log  # --open-mode=append: both incarnations in one log

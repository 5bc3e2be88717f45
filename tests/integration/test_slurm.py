"""A real one-node SLURM (started by scripts/slurm-up.sh): an experiment's job chain, one array task preempted
mid-training with its signal; it requeues itself alone, resumes at the checkpoint's epoch and finishes, and the
find-best job runs after every fold."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from supervisor.checkpoints.meta import read_meta
from supervisor.experiment.context import Cell, ExperimentContext
from tests.conftest import events_of, state_of, wait_for
from tests.integration.test_cooperative import SPARSE, first_epoch, training_logs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


SLURM_DIR = Path(os.environ.get("NNUNET_SUPERVISE_SLURM_DIR", "/tmp/nnunet-supervise-slurm"))


def slurm_required() -> bool:
    """In CI (CI set) or with NNUNET_SUPERVISE_REQUIRE_SLURM=1 a SLURM that cannot be started fails the test: a
    skipped harness must not pass a run."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("NNUNET_SUPERVISE_REQUIRE_SLURM") == "1"


def no_slurm(reason: str) -> NoReturn:
    if slurm_required():
        pytest.fail(f"the private test SLURM is required here (CI or NNUNET_SUPERVISE_REQUIRE_SLURM=1): {reason}",
                    pytrace=False)
    pytest.skip(reason)


def private_slurm_running() -> bool:
    """slurm-up.sh's own daemons all alive (by its pid files), so this fixture did not start them."""
    for name in ("munged", "slurmctld", "slurmd"):
        try:
            pid = int((SLURM_DIR / "run" / f"{name}.pid").read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() != name:
                return False
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    """The environment for every SLURM command of the tests and for the processes they start: SLURM_CONF of the
    private one-node cluster of scripts/slurm-up.sh (its own munged, ports and folder; a SLURM already on this
    machine is left alone). Stopped after the module by scripts/slurm-down.sh if this fixture started it."""
    if os.geteuid() != 0:
        no_slurm("the private test SLURM runs slurmctld/slurmd as root (SlurmUser=root); this is not root")
    missing = [t for t in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(t) is None]
    if missing:
        no_slurm(f"{', '.join(missing)} not installed (bash scripts/system-deps.sh installs slurm-wlm and munge)")
    started = not private_slurm_running()
    env = {**os.environ, "NNUNET_SUPERVISE_SLURM_DIR": str(SLURM_DIR)}
    env.pop("SLURM_CONF", None)
    try:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-up.sh")], capture_output=True, text=True,
                           timeout=300, env=env)
    except subprocess.TimeoutExpired:
        no_slurm("scripts/slurm-up.sh did not finish in 300 s")
    last = (r.stdout.strip().splitlines() or [""])[-1]
    m = re.fullmatch(r"export SLURM_CONF=(\S+)", last)
    if r.returncode != 0 or m is None:
        said = (r.stderr.strip() or r.stdout.strip())[-1500:] or "(it printed nothing)"
        no_slurm(f"scripts/slurm-up.sh exited {r.returncode} without starting the private SLURM: {said}")
    env["SLURM_CONF"] = m.group(1)
    yield env
    if started:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm-down.sh")], capture_output=True, text=True,
                       timeout=180, env=env, check=False)


def job_field(job: str, field: str, env: dict[str, str]) -> str | None:
    r = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env)
    m = re.search(rf"\b{field}=(\S+)", r.stdout)
    return m.group(1) if m else None


def completed(job: str, env: dict[str, str]) -> bool:
    return job_field(job, "JobState", env) == "COMPLETED"


def test_an_experiment_chain_requeues_a_preempted_task_alone_and_finds_the_best_after_every_fold(
        slurm_env: dict[str, str], tiny_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """`slurm EXPERIMENT --submit`: one configuration x two folds (an array of 2 tasks) and the find-best job after it.
    Task 1 gets the preemption signal, requeues itself alone (its sibling trains on undisturbed), resumes at its saved
    epoch and finishes; then the find-best job runs and writes its output."""
    raw, pre = tiny_dataset
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": {"configurations": ["3d_fullres"], "folds": [0, 1]},
        "nnunet": {"dataset": 901, "trainer": "nnUNetTrainer_Sparse", "device": "cpu", "trainer_paths": [str(SPARSE)],
                   "env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}},
        "paths": {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(tmp_path / "res")},
        "restart": {"backoff_initial_s": 1, "backoff_max_s": 5},
        "cooperative": {"enabled": True},
    }))
    # the tasks, starting together, must write it ahead themselves (earlier tests on this dataset left one behind;
    # what they write is the same: nnU-Net's own split, seed 12345)
    (pre / "Dataset901_Tiny" / "splits_final.json").unlink(missing_ok=True)
    exp = ExperimentContext.load(path)
    ctx0, ctx1 = (exp.run(Cell("3d_fullres", f)) for f in (0, 1))
    out = subprocess.run([sys.executable, "-m", "supervisor", "slurm", str(path), "--submit", "--parsable",
                          "--time", "00:30:00", "--cpus", "1", "--mem", "4G"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, env=slurm_env)
    assert out.returncode == 0, out.stderr
    array, best = out.stdout.split()
    task0, task1 = f"{array}_0", f"{array}_1"
    try:
        wait_for(lambda: (state_of(ctx1).get("epoch") or 0) >= 2 and (state_of(ctx0).get("epoch") or 0) >= 1, 300,
                 "both tasks' trainings to be under way")
        assert job_field(best, "JobState", slurm_env) == "PENDING"  # afterok: it waits for the whole array
        # what --signal=B:USR1@300 sends
        subprocess.run(["scancel", "-s", "USR1", "--batch", task1], check=True, env=slurm_env)
        wait_for(lambda: any(e["event"] == "requeue" for e in events_of(ctx1)), 180, "the requeue")
        stopped = read_meta(ctx1.layout.fold_dir / "checkpoint_latest.pth").current_epoch
        # SLURM holds a requeued job for the credential lifetime (BeginTime; cred_expire, 10 s on the test cluster,
        # 120 s by default). Releasing it earlier races the revoked credential: slurmd refuses the new incarnation
        # ("Job credential revoked") and the task fails with exit 1, so the test lets SLURM start it in its own time.
        wait_for(lambda: job_field(task1, "JobState", slurm_env) == "PENDING", 120, "task 1 to be pending again")
        assert job_field(task0, "JobState", slurm_env) in ("RUNNING", "COMPLETED")  # the sibling was not touched
        for job in (task0, task1, best):
            wait_for(functools.partial(completed, job, slurm_env), 600, f"{job} to complete")
    finally:
        for job in (task0, task1, best):
            if job_field(job, "JobState", slurm_env) not in ("COMPLETED", None):
                subprocess.run(["scancel", job], check=False, env=slurm_env)
    assert job_field(task1, "Restarts", slurm_env) == "1" and job_field(task0, "Restarts", slurm_env) == "0"
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
    assert (exp.layout.root / "inference_instructions.txt").is_file()  # the find-best job ran after both folds
    log = next((exp.layout.root / "slurm").glob(f"slurm-*-{array}_1.out")).read_text()
    assert "restart count 1" in log  # --open-mode=append: both incarnations in one log
    outs = "".join(p.read_text() for p in (exp.layout.root / "slurm").glob(f"slurm-*-{array}_*.out"))
    assert re.search(r"wrote \S*splits_final\.json .*as nnU-Net would", outs)  # a task wrote it ahead, atomically

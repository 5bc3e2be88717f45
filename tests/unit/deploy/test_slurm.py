"""The sbatch script (a pure render) and the in-job rule for requeueing; the real cluster is in integration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.context import RunContext
from supervisor.deploy import slurm as slurm
from supervisor.errors import ConfigError
from tests.conftest import make_ctx


def test_the_script_requeues_signals_the_batch_shell_appends_and_execs(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    text = slurm.render(slurm.spec_for(ctx, "/venv/bin/python", time="2-00:00:00", gres="gpu:1"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --requeue" in lines and "#SBATCH --signal=B:USR1@300" in lines
    assert "#SBATCH --open-mode=append" in lines and "#SBATCH --time=2-00:00:00" in lines
    assert "#SBATCH --gres=gpu:1" in lines and "#SBATCH --job-name=nnunet-Dataset901_Tiny-3d_fullres-f0" in lines
    assert f"#SBATCH --output={ctx.layout.fold_dir.parent}/slurm-%x-%j.out" in lines
    assert lines[-1] == f"exec /venv/bin/python -m supervisor run {ctx.config_path}"
    assert not any("--partition" in x or "--array" in x for x in lines)


def test_folds_make_a_job_array_whose_task_id_is_the_fold(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    text = slurm.render(slurm.spec_for(ctx, "python", folds="0-4"))
    assert "#SBATCH --array=0-4" in text and "slurm-%x-%A_%a.out" in text
    assert text.rstrip().endswith('--fold "${SLURM_ARRAY_TASK_ID}"')
    assert RunContext.load(ctx.config_path, "3").layout.fold_dir.name == "fold_3"
    with pytest.raises(ConfigError, match="--fold: got 'x'"):
        RunContext.load(ctx.config_path, "x")


def test_tasks_make_an_array_over_the_command_itself_with_its_words_as_written(tmp_path: Path) -> None:
    """An experiment's prediction in parts: no table, the task id read by the command's own words."""
    spec = slurm.JobSpec(job_name="parts", python="/venv/bin/python", config=tmp_path / "exp.yaml",
                         log_dir=tmp_path, environment={}, command=("predict",), tasks=3,
                         args=("--part", '"${SLURM_ARRAY_TASK_ID}/3"'), max_parallel=2)
    text = slurm.render(spec)
    assert "#SBATCH --array=0-2%2" in text and "slurm-%x-%A_%a.out" in text and "#SBATCH --requeue" in text
    assert "CELLS=(" not in text and "--fold" not in text
    assert text.rstrip().splitlines()[-1] == \
        f'exec /venv/bin/python -m supervisor predict {tmp_path / "exp.yaml"} --part "${{SLURM_ARRAY_TASK_ID}}/3"'
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


@pytest.mark.parametrize(("reason", "code", "env", "expected"), [
    ("SIGUSR1", 75, {"SLURM_JOB_ID": "7"}, True),
    ("SIGTERM", 75, {"SLURM_JOB_ID": "7"}, False),  # scancel or the time limit: no requeue
    ("SIGUSR1", 1, {"SLURM_JOB_ID": "7"}, False),  # gave up: never requeue
    ("SIGUSR1", 0, {"SLURM_JOB_ID": "7"}, False),  # finished meanwhile
    ("SIGUSR1", 75, {}, False),  # not in a job
])
def test_only_a_preemption_stop_inside_a_job_requeues(reason: str, code: int, env: dict[str, str],
                                                      expected: bool) -> None:
    assert slurm.should_requeue(reason, code, env) is expected


@pytest.mark.process
def test_the_cli_prints_both_renderings(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    for args in (["slurm", "--folds", "0-4", "--lead", "900"], ["systemd"]):
        r = subprocess.run([sys.executable, "-m", "supervisor", args[0], str(ctx.config_path), *args[1:]],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert ("#SBATCH --signal=B:USR1@900" if args[0] == "slurm" else "Type=notify") in r.stdout
    bad = subprocess.run([sys.executable, "-m", "supervisor", "slurm", str(ctx.config_path), "--folds", "a-b"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--folds: got 'a-b'" in bad.stderr


def test_inside_an_array_only_this_task_is_named_for_the_requeue() -> None:
    # the array's last task: SLURM_JOB_ID is the array's own id, which scontrol would take as the whole array
    env = {"SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "1"}
    assert slurm.job_id(env) == "40_1"
    assert slurm.job_id({"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "0"}) == "40_0"
    assert slurm.job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm.job_id({}) is None

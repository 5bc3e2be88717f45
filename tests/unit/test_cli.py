"""The command line: exit codes and messages a user sees, without launching nnU-Net."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from supervisor.cli import main
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.statefile import StateStore
from tests.conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pre" / "Dataset901_Tiny").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


GOOD = """
nnunet: {dataset: 901, configuration: 3d_fullres, fold: 0, device: cpu}
paths: {nnUNet_preprocessed: pre, nnUNet_results: res}
"""


def test_misspelled_key_exits_2_and_names_it(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD + "restart: {max_restrats: 3}\n")
    for command in ("run", "check"):
        result = CliRunner().invoke(main, [command, str(config)])
        assert result.exit_code == 2
        assert "restart.max_restrats: unknown key (did you mean 'max_restarts'?)" in result.output


def test_bare_config_argument_means_run(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD + "nnunet_typo: 1\n")
    result = CliRunner().invoke(main, [str(config)])
    assert result.exit_code == 2 and "nnunet_typo: unknown key" in result.output


def test_run_refuses_a_missing_preprocessed_dataset_with_2(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD.replace("901", "Dataset902_Other"))
    result = CliRunner().invoke(main, ["run", str(config)])
    assert result.exit_code == 2
    assert "preprocessed dataset missing" in result.output and "nnUNetv2_plan_and_preprocess" in result.output


def test_unknown_dataset_id_is_named(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD.replace("901", "77"))
    result = CliRunner().invoke(main, ["check", str(config)])
    assert result.exit_code == 2 and "nnunet.dataset: no folder Dataset077_*" in result.output


def test_status_json_reads_the_run_directory(tmp_path: Path) -> None:
    from supervisor.context import RunContext

    config = write(tmp_path, GOOD)
    ctx = RunContext.load(config)
    ctx.layout.supervisor_dir.mkdir(parents=True)
    StateStore(ctx.layout.state_file).save({"state": "backoff", "attempt": 2, "restarts": 1, "epoch": 4,
                                            "pid": None, "last_exit": {"classification": "killed_by_signal"}})
    EventLog(ctx.layout.events_file, wall=lambda: 100.0).record("backoff", delay_s=10.0)
    result = CliRunner().invoke(main, ["status", str(config), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["state"] == "backoff" and info["attempt"] == 2 and info["epoch"] == 4
    assert info["supervisor_alive"] is False and info["last_event"]["event"] == "backoff"
    text = CliRunner().invoke(main, ["status", str(config)])
    assert "state      backoff" in text.output and "killed_by_signal" in text.output


@pytest.mark.process
def test_python_dash_m_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "supervisor", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "nnunet-supervise" in out.stdout


@pytest.mark.process
def test_daemon_modules_do_not_import_torch() -> None:
    code = ("import sys, supervisor.cli, supervisor.daemon.runner, supervisor.preflight; "
            "sys.exit(1 if {'torch', 'prometheus_client', 'apprise', 'rich'} & set(sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.process
def test_verify_says_usable_or_why_not_with_exit_0_or_1(tmp_path: Path) -> None:
    import torch

    from tests.ckpt_fixtures import nnunet_checkpoint

    good = tmp_path / "checkpoint_latest.pth"
    torch.save(nnunet_checkpoint(current_epoch=12), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-5000])

    ok = CliRunner().invoke(main, ["verify", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "usable (epoch 12)" in ok.output and "compatibility -" in ok.output

    bad = CliRunner().invoke(main, ["verify", "--json", str(cut)])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["ok"] is False and report["problems"] and report["missing_keys"] == []

    gone = CliRunner().invoke(main, ["verify", "--json", str(tmp_path / "nope.pth")])
    assert gone.exit_code == 1 and json.loads(gone.output)["problems"] == ["no such file"]


def test_stop_with_nothing_running_says_so_and_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stop", str(write(tmp_path, GOOD))])
    assert result.exit_code == 1
    assert "no supervisor is running" in result.output


def test_status_json_has_totals_checkpoint_age_eta_and_the_last_failure(tmp_path: Path) -> None:
    import time as _time

    from supervisor.context import RunContext
    from supervisor.observe.status import gather
    from tests.ckpt_fixtures import nnunet_checkpoint, save

    config = write(tmp_path, GOOD)
    layout = RunContext.load(config).layout
    layout.supervisor_dir.mkdir(parents=True)
    (layout.fold_dir / "debug.json").write_text(json.dumps({"num_epochs": "1000"}))  # as nnU-Net writes it
    save(layout.fold_dir / "checkpoint_latest.pth", nnunet_checkpoint(current_epoch=40))
    StateStore(layout.state_file).save({"state": "running", "attempt": 3, "restarts": 2, "epoch": 42,
                                        "epoch_times": [100.0, 120.0, 110.0], "pid": 4242})
    events = EventLog(layout.events_file, wall=lambda: 500.0)
    events.record("exit", attempt=1, classification="cuda_oom", retryable=True, summary="CUDA out of memory")
    events.record("exit", attempt=2, classification="stopped", retryable=False, summary="stopped on request")
    info = gather(layout, live=True, now=_time.time() + 30)
    assert info["num_epochs"] == 1000 and info["epoch"] == 42 and info["pid"] == 4242
    assert info["last_checkpoint_epoch"] == 40 and 29 <= info["last_checkpoint_age_s"] <= 60
    assert info["eta_s"] == (1000 - 42) * 110.0  # remaining epochs x the median epoch
    assert info["last_failure"] == {"ts": 500.0, "attempt": 1, "classification": "cuda_oom", "retryable": True,
                                    "summary": "CUDA out of memory"}  # a stop on request is not a failure
    assert gather(layout, live=False)["eta_s"] is None and gather(layout, live=False)["pid"] is None


def test_schema_describes_every_section_strictly() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc["required"] == ["nnunet"]
    assert set(doc["properties"]) == {"nnunet", "paths", "restart", "process", "heartbeat", "checkpoint",
                                      "cooperative", "power", "metrics", "notify", "remedies", "preprocess", "predict"}
    assert all(d.get("additionalProperties") is False for d in doc["$defs"].values() if "properties" in d)


def test_every_example_config_is_valid() -> None:
    import yaml

    from supervisor.config import parse_config
    from supervisor.expfile import is_experiment, parse_experiment

    examples = sorted((REPO / "configs").glob("*.yaml"))
    assert [p.name for p in examples] == ["experiment.yaml", "slurm.yaml", "systemd.yaml", "workstation.yaml"]
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        # raises ConfigError naming the problem
        parse_experiment(doc, str(path)) if is_experiment(doc) else parse_config(doc, str(path))

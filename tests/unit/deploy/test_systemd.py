"""The rendered unit: text, systemd-analyze verify and security, --install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.context import RunContext
from supervisor.deploy.systemd import render, spec_for, unit_name
from tests.conftest import make_ctx


def rendered(tmp_path: Path, device: str, **cooperative: object) -> Path:
    ctx = make_ctx(tmp_path, [])
    data = ctx.config.model_dump()
    data["nnunet"]["device"] = device
    data["cooperative"].update(cooperative)
    cfg = tmp_path / "my run.yaml"  # a space: systemd's quoting must hold
    import json
    cfg.write_text(json.dumps(data))
    ctx = RunContext.load(cfg)
    unit = tmp_path / unit_name(cfg)
    unit.write_text(render(spec_for(ctx, sys.executable, None, False)))
    return unit


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.mark.process
@needs_systemd
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path, device: str) -> None:
    unit = rendered(tmp_path, device, enabled=device == "cuda")
    text = unit.read_text()
    assert unit.name == "nnunet-supervise-my-run.service"
    assert "Type=notify" in text and "WatchdogSec=60" in text and "KillMode=mixed" in text
    assert f'ExecStart={sys.executable} -m supervisor run "{tmp_path}/my run.yaml"' in text
    assert f"ReadWritePaths={tmp_path}/res {tmp_path}/pre" in text
    assert "RestartPreventExitStatus=1 2 3" in text and "SuccessExitStatus=75" in text
    # an OOM kill of the trainer is ours to answer, and the kernel picks the trainer, not us
    assert "OOMPolicy=continue" in text and "OOMScoreAdjust=-500" in text
    assert "Environment=NNUNET_SUPERVISE_CHILD_OOM_SCORE_ADJ=0" in text
    assert ("TimeoutStopSec=182" in text) == (device == "cuda")  # grace 2 + a save at the next step 120 + 60
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.process
@needs_systemd
def test_the_hardening_scores_ok_in_systemd_analyze_security(tmp_path: Path) -> None:
    unit = rendered(tmp_path, "cuda")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert score is not None, r.stdout + r.stderr
    assert float(score.group(1)) <= 4.0  # "OK"; an unhardened unit scores 9.6


@pytest.mark.process
def test_install_writes_a_user_unit_and_says_how_to_start_it(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, [])
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "supervisor", "systemd", str(ctx.config_path), "--user", "--install"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    unit = home / ".config/systemd/user/nnunet-supervise-run.service"
    assert "Type=notify" in unit.read_text() and "WantedBy=default.target" in unit.read_text()
    assert "User=" not in unit.read_text()  # a user unit runs as its user
    assert "systemctl --user daemon-reload && systemctl --user enable --now nnunet-supervise-run.service" in r.stdout

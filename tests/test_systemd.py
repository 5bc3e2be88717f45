"""systemd: the notify protocol on a real AF_UNIX datagram socket, and rendered units checked by systemd's tools."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from supervisor.context import RunContext
from supervisor.runner import Runner
from supervisor.sdnotify import Notifier
from supervisor.service import status_line
from supervisor.unitfile import render, spec_for, unit_name
from tests.test_runner import fake_spawn, make_ctx


@pytest.fixture
def listener(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    return sock


def drain(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out += sock.recv(4096).decode().splitlines()
    except TimeoutError:
        return out


def test_a_full_receiver_queue_drops_messages_instead_of_blocking(tmp_path: Path, listener: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    sent = [n.send(f"STATUS={i}") for i in range(5000)]  # nobody reads: the queue fills
    assert sent[0] and not all(sent)


class Collector:
    """Reads the socket in a thread, as systemd does, so nothing is dropped."""

    def __init__(self, sock: socket.socket) -> None:
        self.lines: list[str] = []
        sock.settimeout(None)
        self.sock = sock
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self.lines += self.sock.recv(4096).decode().splitlines()
            except OSError:
                return


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None and n.send("READY=1") is False
    n.ready("x")
    n.watchdog(0.0)


def test_messages_arrive_and_the_watchdog_pings_at_half_its_interval(tmp_path: Path, listener: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "10000000"})
    assert n.watchdog_s == 10.0
    n.ready("supervising run.yaml")
    assert listener.recv(4096).decode().splitlines()[:2] == ["READY=1", "STATUS=supervising run.yaml"]
    for now in (100.0, 104.9, 105.0, 109.9, 110.0):
        n.watchdog(now)
    n.status("running: attempt 1")
    n.status("running: attempt 1")  # unchanged: not sent again
    n.stopping("stopped: exit 75")
    assert drain(listener) == ["WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1", "STATUS=running: attempt 1", "STOPPING=1",
                               "STATUS=stopped: exit 75"]


def test_abstract_socket_names_and_a_watchdog_meant_for_another_pid() -> None:
    n = Notifier({"NOTIFY_SOCKET": "@/org/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.address == "\0/org/x" and n.watchdog_s is None


def test_the_runner_is_ready_reports_status_pings_and_says_stopping(tmp_path: Path,
                                                                   listener: socket.socket) -> None:
    ctx = make_ctx(tmp_path, [{"epochs": [0, 3], "outcome": "1"}, {"epochs": [3, 5], "outcome": "finish"}])
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"})
    collector = Collector(listener)
    assert Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0, notifier=notifier).run() == 0
    time.sleep(0.2)  # the reader thread catches up (a real socket, real thread)
    said = collector.lines
    assert said[0] == "READY=1"
    assert "STATUS=backoff: attempt 1, epoch 2, no checkpoint yet" in said  # nnU-Net's epoch index
    assert said.count("WATCHDOG=1") >= 1
    assert said[-2:] == ["STOPPING=1", "STATUS=finished: exit 0"]


def test_status_line_reads_like_a_person_wrote_it() -> None:
    assert status_line("running", 2, 5, 1000, 200.0) == "running: attempt 2, epoch 5/1000, last checkpoint 3 min ago"
    assert status_line("starting", 1, None, None, None) == "starting: attempt 1, no checkpoint yet"


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


@needs_systemd
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path, device: str) -> None:
    unit = rendered(tmp_path, device, enabled=device == "cuda")
    text = unit.read_text()
    assert unit.name == "nnunet-supervise-my-run.service"
    assert "Type=notify" in text and "WatchdogSec=600" in text and "KillMode=mixed" in text
    assert f'ExecStart={sys.executable} -m supervisor run "{tmp_path}/my run.yaml"' in text
    assert f"ReadWritePaths={tmp_path}/res {tmp_path}/pre" in text
    assert "RestartPreventExitStatus=1 2 3" in text and "SuccessExitStatus=75" in text
    assert ("TimeoutStopSec=962" in text) == (device == "cuda")  # grace 2 + cooperative save 900 + 60
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@needs_systemd
def test_the_hardening_scores_ok_in_systemd_analyze_security(tmp_path: Path) -> None:
    unit = rendered(tmp_path, "cuda")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert score is not None, r.stdout + r.stderr
    assert float(score.group(1)) <= 4.0  # "OK"; an unhardened unit scores 9.6


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

"""systemd's notify protocol over a real AF_UNIX datagram socket, alone and from the runner."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from supervisor.daemon.runner import Runner
from supervisor.deploy.sdnotify import Notifier
from tests.conftest import fake_spawn, make_ctx


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


@pytest.mark.process
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

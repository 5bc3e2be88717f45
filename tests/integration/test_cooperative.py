"""Cooperative mode on real nnUNetv2_train (CPU), with a custom trainer that keeps nnU-Net's save_every = 50.

A SIGKILL redoes at most one epoch; SIGUSR1 to the supervisor saves, exits 75 and the next start redoes
nothing; a save killed at random instants never leaves an unreadable checkpoint_latest.pth; the resumed
learning rate is the uninterrupted schedule's.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from supervisor.checkpoints.meta import read_meta
from supervisor.checkpoints.structure import verify_structure
from supervisor.context import RunContext
from supervisor.daemon.process import marked_processes
from tests.conftest import events_of, reach_epoch, supervise, wait_for

pytestmark = pytest.mark.integration

SPARSE = Path(__file__).resolve().parents[1] / "trainers"
NUM_EPOCHS = 6  # nnUNetTrainer_Sparse
EPOCH_RE = re.compile(r": Epoch (\d+) ?$", re.M)
LR_RE = re.compile(r": Epoch (\d+) ?\n.*Current learning rate: ([0-9.e-]+)")
DONE_RE = re.compile(r"Epoch time: ")


@pytest.fixture
def sparse_config(write_config: Any) -> Any:
    def write(**sections: Any) -> Path:
        return write_config(nnunet={"trainer": "nnUNetTrainer_Sparse", "trainer_paths": [str(SPARSE)]},
                            cooperative={"enabled": True, "save_every_epochs": 1}, **sections)
    return write


def training_logs(ctx: RunContext) -> list[str]:
    return [p.read_text() for p in sorted(ctx.layout.fold_dir.glob("training_log_*.txt"))]


def epochs_completed(log: str) -> int:
    return len(DONE_RE.findall(log))


def first_epoch(log: str) -> int:
    return int(EPOCH_RE.findall(log)[0])


def poly_lr(epoch: int, initial: float = 1e-2, exponent: float = 0.9) -> float:
    """nnU-Net's PolyLRScheduler, as the uninterrupted schedule would set it at the start of `epoch`."""
    return round(initial * (1 - epoch / NUM_EPOCHS) ** exponent, 5)


def assert_lr_follows_the_schedule(logs: list[str]) -> None:
    for log in logs:
        for epoch, lr in LR_RE.findall(log):
            assert float(lr) == pytest.approx(poly_lr(int(epoch)), abs=1e-5), f"epoch {epoch}: lr {lr}"


def assert_nothing_of_the_run_left(ctx: RunContext) -> None:
    assert marked_processes(str(ctx.layout.fold_dir)) == []


def test_a_sigkill_redoes_at_most_one_epoch_and_the_lr_schedule_continues(sparse_config: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = sparse_config(metrics={"port": port})
    ctx = RunContext.load(config)
    sup = supervise(config)
    try:
        pid = reach_epoch(ctx, 3)
        status = json.loads(subprocess.run([sys.executable, "-m", "supervisor", "status", str(config), "--json"],
                                           capture_output=True, text=True, timeout=60).stdout)
        assert status["supervisor_alive"] and status["pid"] == pid and status["num_epochs"] == NUM_EPOCHS
        assert status["last_checkpoint_epoch"] >= 2 and status["eta_s"] is not None  # read during the run
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f"nnunet_supervise_num_epochs{{run=\"{ctx.layout.fold_dir}\"}} {NUM_EPOCHS}.0" in metrics
        assert re.search(r'nnunet_supervise_state\{run="[^"]+",state="running"\} 1\.0', metrics)
        time.sleep(random.uniform(0.0, 2.5))  # a moment we do not choose: mid-iteration, mid-save, ...
        os.kill(pid, signal.SIGKILL)
        killed_after = epochs_completed(training_logs(ctx)[0])
        assert sup.wait(timeout=300) == 0
    finally:
        if sup.poll() is None:
            sup.kill()
    logs = training_logs(ctx)
    assert len(logs) == 2
    resumed_at = first_epoch(logs[1])
    assert killed_after - resumed_at <= 1, f"{killed_after} epochs done, resumed at {resumed_at}"
    assert killed_after >= 3  # nnU-Net itself (save_every 50) would have had nothing to resume from
    assert_lr_follows_the_schedule(logs)
    exits = [e for e in events_of(ctx) if e["event"] == "exit"]
    assert exits[0]["classification"] == "killed_by_signal" and exits[-1]["classification"] == "finished"
    assert (ctx.layout.fold_dir / "checkpoint_final.pth").exists()
    assert_nothing_of_the_run_left(ctx)
    picture = ctx.layout.supervisor_dir / "timeline.png"
    report = json.loads(subprocess.run([sys.executable, "-m", "supervisor", "report", str(config), "-o", str(picture),
                                        "--json"], capture_output=True, text=True, timeout=120).stdout)
    assert report["epochs_kept"] == NUM_EPOCHS and report["epochs_redone"] == killed_after - resumed_at
    assert report["restarts"] == 1 and 0 < report["goodput"] < 1 and picture.stat().st_size > 10_000
    assert [f["classification"] for f in report["failures"]] == ["killed_by_signal"]


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET; collects what arrives."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.messages: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for m in self.messages for line in m.splitlines()]


def test_sigusr1_saves_exits_75_and_the_next_start_redoes_nothing(sparse_config: Any, tmp_path: Path) -> None:
    config = sparse_config()
    ctx = RunContext.load(config)
    notify = NotifySocket(tmp_path / "notify.sock")  # this run also shows the daemon speaking systemd's protocol
    sup = supervise(config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
    try:
        reach_epoch(ctx, 2)
        time.sleep(random.uniform(0.0, 2.5))
        sup.send_signal(signal.SIGUSR1)  # what SLURM's --signal=B:USR1@... delivers to the batch shell
        assert sup.wait(timeout=120) == 75
    finally:
        if sup.poll() is None:
            sup.kill()
    assert_nothing_of_the_run_left(ctx)
    done = epochs_completed(training_logs(ctx)[0])
    saved = read_meta(ctx.layout.fold_dir / "checkpoint_latest.pth").current_epoch
    assert saved == done, f"{done} epochs completed but checkpoint_latest.pth holds {saved}"
    log = ctx.layout.attempt_log(1).read_text()
    assert "nnunet-supervise: stop requested (SIGUSR1)" in log
    stop = [e for e in events_of(ctx) if e["event"] == "exit"][-1]
    assert stop["classification"] == "stopped" and "after saving a checkpoint" in stop["summary"]
    said = notify.lines()
    assert said[0] == "READY=1" and f"MAINPID={sup.pid}" in said
    assert any(re.fullmatch(r"STATUS=running: attempt 1, epoch \d+/6, last checkpoint \d+ s ago", x) for x in said)
    assert said.count("WATCHDOG=1") >= 10  # every second (half of 2 s) for the minute it ran
    assert said[-2:] == ["STOPPING=1", "STATUS=stopped: exit 75"]

    assert subprocess.run([sys.executable, "-m", "supervisor", "run", str(config)], timeout=300,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    logs = training_logs(ctx)
    assert first_epoch(logs[1]) == done  # nothing redone
    assert_lr_follows_the_schedule(logs)
    assert_nothing_of_the_run_left(ctx)


KILLED_SAVER = r"""
import os, sys, torch
from pathlib import Path
from supervisor.trainer.cooperative import atomic_save
target = Path(sys.argv[1])
state = {"network_weights": {f"w{i}": torch.randn(256, 1024) for i in range(24)}, "current_epoch": 0}
print("ready", flush=True)
epoch = 0
while True:  # saves back to back until killed: every kill lands in some phase of a save
    epoch += 1
    state["current_epoch"] = epoch
    atomic_save(lambda tmp: torch.save(state, tmp), target)
"""


def test_a_save_killed_at_random_instants_never_leaves_an_unreadable_latest(tmp_path: Path) -> None:
    import torch

    target = tmp_path / "checkpoint_latest.pth"
    epochs = []
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(target)], stdout=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[2])
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        wait_for(target.exists, 60, "the first save")
        time.sleep(random.uniform(0.2, 2.0))
        proc.kill()
        proc.wait()
        verdict = verify_structure(target)
        assert verdict.ok, verdict.problems
        epochs.append(torch.load(target, weights_only=True)["current_epoch"])
    assert all(e >= 1 for e in epochs)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 600 MB tmpfs (root only): a real file system that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    yield mount
    for f in mount.glob("results/*/*/fold_0/supervisor/*"):  # keep the run's record for a failed test's reader
        if f.suffix in (".log", ".jsonl", ".json"):
            (tmp_path / "kept").mkdir(exist_ok=True)
            (tmp_path / "kept" / f.name).write_bytes(f.read_bytes())
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_checkpoint_and_waits_for_space(sparse_config: Any, small_disk: Path) -> None:
    import shutil

    config = sparse_config(paths={"nnUNet_results": str(small_disk / "results")},
                           restart={"backoff_initial_s": 1, "backoff_max_s": 5, "disk_check_s": 1})
    ctx = RunContext.load(config)
    sup = supervise(config)
    ballast = small_disk / "ballast"
    try:
        reach_epoch(ctx, 2)
        free = shutil.disk_usage(small_disk).free
        with open(ballast, "wb") as f:  # leave 20 MB: the log goes on, the next 44 MB checkpoint cannot
            os.posix_fallocate(f.fileno(), 0, free - 20 * 2**20)
        wait_for(lambda: any(e["event"] == "disk_full" for e in events_of(ctx)), 120, "the disk_full event")
        latest = ctx.layout.fold_dir / "checkpoint_latest.pth"
        assert verify_structure(latest).ok  # the failed save left the previous one whole
        held = read_meta(latest).current_epoch
        time.sleep(5)  # waiting, not looping: no new attempt while the disk is full
        assert [e["event"] for e in events_of(ctx)].count("launch") == 1
        assert not list(ctx.layout.fold_dir.glob(".checkpoint_*"))  # no half-written temporary left
        ballast.unlink()
        assert sup.wait(timeout=300) == 0
    finally:
        if sup.poll() is None:
            sup.kill()
    evs = events_of(ctx)
    exits = [e for e in evs if e["event"] == "exit"]
    assert exits[0]["classification"] == "disk_full" and exits[0]["returncode"] == 74
    assert "disk_space" in [e["event"] for e in evs]
    logs = training_logs(ctx)
    assert first_epoch(logs[1]) == held
    assert_nothing_of_the_run_left(ctx)


def test_a_stop_inside_an_epoch_costs_no_step_and_a_sigkill_with_snapshots_costs_a_few(write_config: Any,
                                                                                       tmp_path: Path) -> None:
    """With steps of 0.4 s (8 an epoch) and a snapshot every second: a SIGKILL inside epoch 1 redoes only the steps
    since the last snapshot; a stop inside epoch 2 saves after the step in flight, exits 75, and the next start
    runs only that epoch's remaining steps; every epoch is logged once."""
    import torch

    steps = tmp_path / "steps.txt"
    config = write_config(nnunet={"trainer": "nnUNetTrainer_SlowSteps", "trainer_paths": [str(SPARSE)],
                                  "env": {"STEPS_FILE": str(steps), "nnUNet_n_proc_DA": "1"}},
                          cooperative={"enabled": True, "save_every_epochs": 1, "snapshot_every_s": 1.0})
    ctx = RunContext.load(config)

    def ran(epoch: int) -> int:
        return [line.split()[0] for line in steps.read_text().splitlines()].count(str(epoch)) if steps.exists() else 0

    sup = supervise(config)
    try:
        wait_for(lambda: ran(1) >= 6, 400, "six steps of epoch 1", interval_s=0.05)
        killed_at = ran(1)
        os.kill(int(json.loads(ctx.layout.heartbeat_file.read_text())["pid"]), signal.SIGKILL)
        wait_for(lambda: 2 <= ran(2) <= 4, 400, "epoch 2 under way after the relaunch", interval_s=0.05)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=120) == 75
    finally:
        if sup.poll() is None:
            sup.kill()
    from supervisor.checkpoints.probe import check_content

    saved, problems, _ = check_content(str(ctx.layout.fold_dir / "checkpoint_latest.pth"), {})
    assert saved is not None and problems == []  # the supervisor's own weights-only probe takes it
    inside = saved["nnunet_supervise_step"]
    assert saved["current_epoch"] == 2 and inside["epoch"] == 2 and inside["steps_total"] == 8
    assert 2 <= inside["steps_done"] < 8 and inside["steps_done"] == ran(2)  # the step in flight finished, kept
    assert subprocess.run([sys.executable, "-m", "supervisor", "run", str(config)], timeout=300,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    assert ran(0) == 8 and ran(2) == 8  # the stop cost no step
    redone = ran(1) - 8
    # the snapshot of at most a second (2.5 steps) before, plus the step in flight at the kill
    assert 0 <= redone <= 4, f"{redone} steps of epoch 1 redone (killed after {killed_at})"
    attempts = [ctx.layout.attempt_log(n).read_text() for n in (1, 2, 3)]
    assert "saving after the training step in flight" in attempts[1]
    assert re.search(r"resuming epoch 1 at step \d of 8", attempts[1])
    assert f"resuming epoch 2 at step {inside['steps_done'] + 1} of 8" in attempts[2]
    final = torch.load(ctx.layout.fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = final["logging"]
    assert len(logging["train_losses"]) == len(logging["lrs"]) == 3  # each epoch logged once
    assert logging["lrs"] == pytest.approx([round(1e-2 * (1 - e / 3) ** 0.9, 5) for e in range(3)], abs=1e-5)
    assert_nothing_of_the_run_left(ctx)

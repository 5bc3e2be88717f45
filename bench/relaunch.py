"""Relaunch delay and daemon footprint, measured from outside, side by side with a bash `until` loop.

    .venv/bin/python bench/relaunch.py [WORKDIR]

Every variant trains on the tiny CPU dataset; after epoch 3 the trainer's main process gets SIGKILL. We then read,
from /proc, when the next trainer process was created (the relaunch delay; for the supervisor, minus the backoff
delay it chose and logged, which is its own overhead: stopping the old tree and verifying the checkpoints) and
how many of the killed trainer's workers are still alive right after the relaunch.

The supervisor (backoff 1 s, cooperative mode saving every 4th epoch, a trainer whose best is never beaten, as late
in a real training) runs twice: killed once the newest checkpoint was verified ahead (the usual case: nnU-Net saves
every 50 epochs, minutes apart, and the verification takes seconds), and killed right after a checkpoint was
written, while its verification still runs (the worst case: the relaunch waits for it). For the first we also
sample the daemon's RSS and CPU time and check that libtorch never appears in its memory map.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from supervisor.checkpoints.meta import CheckpointError, read_meta
from supervisor.demo.dataset import DATASET_NAME, make_dataset, nnunet_env
from supervisor.demo.runyaml import DEMO_TRAINER, TRAINERS, write_demo_config
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore

KILL_AT = 3
TRAINER = "nnUNetTrainer_SparsePlateauLong"  # bench/trainers: nnU-Net never writes a best, as late in a long run
PLATEAU = Path(__file__).resolve().parent / "trainers"


def boot_time_of(pid: int) -> float:
    """When pid started, in seconds since boot: the kernel's own clock, so no wall-clock skew."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def is_trainer(cmd: list[str]) -> bool:
    """nnUNetv2_train, or nnU-Net's entry through the cooperative shim."""
    return any(c.endswith("nnUNetv2_train") for c in cmd[:2]) or cmd[1:3] == ["-m", "supervisor.trainer.launch"]


ROOT: list[str] = []  # the bench's work folder: only trainers whose nnUNet_results is under it are its own


def ours(p: psutil.Process) -> bool:
    """A trainer of this bench, not one of another run on the same machine (its nnUNet_results is under ROOT)."""
    if not ROOT:
        return True
    try:
        return p.environ().get("nnUNet_results", "").startswith(ROOT[0])
    except psutil.Error:
        return False


def trainers() -> dict[int, float]:
    """pid -> start time (since boot) of every trainer main process of this bench (not its workers)."""
    out = {}
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info["cmdline"] or []
        if is_trainer(cmd) and ours(p):
            try:
                parent = psutil.Process(p.info["ppid"]).cmdline()
            except psutil.Error:
                parent = []
            if not is_trainer(parent):
                try:
                    out[p.pid] = boot_time_of(p.pid)
                except OSError:
                    pass
    return out


def epoch_of(fold: Path) -> int:
    best = -1
    for log in fold.glob("training_log_*.txt"):
        for line in log.read_text(errors="replace").splitlines():
            if ": Epoch " in line and line.rstrip().split(": Epoch ")[-1].isdigit():
                best = max(best, int(line.rstrip().split(": Epoch ")[-1]))
    return best


def latest_epoch(fold: Path) -> int | None:
    try:
        return read_meta(fold / "checkpoint_latest.pth").current_epoch
    except CheckpointError:
        return None


def verified_ahead(fold: Path) -> bool:
    """The supervisor says (state.json) it verified the checkpoint_latest.pth that is there now."""
    epoch = latest_epoch(fold)
    ahead = StateStore(fold / "supervisor" / "state.json").load().get("verified_ahead") or []
    return epoch is not None and any(str(v.get("path", "")).endswith("checkpoint_latest.pth")
                                     and v.get("epoch") == epoch for v in ahead)


def just_written(fold: Path) -> Callable[[], bool]:
    """True once a new checkpoint_latest.pth has appeared since the first look (at most a poll ago)."""
    first = latest_epoch(fold)
    return lambda: latest_epoch(fold) not in (None, first)


def kill_and_measure(fold: Path, ready: Callable[[], bool] = lambda: True, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while epoch_of(fold) < KILL_AT:
        assert time.monotonic() < deadline, "trainer never reached the kill epoch"
        time.sleep(0.2)
    while not ready():
        assert time.monotonic() < deadline, "the kill moment never came"
        time.sleep(0.05)
    (old_pid,) = trainers()
    workers = [c.pid for c in psutil.Process(old_pid).children(recursive=True)]
    t_kill = time.clock_gettime(time.CLOCK_BOOTTIME)
    os.kill(old_pid, signal.SIGKILL)
    while True:
        # orphaned workers re-parent and look like main processes: only a process born after the kill counts
        new = {pid: t for pid, t in trainers().items() if pid != old_pid and pid not in workers and t >= t_kill - 0.05}
        if new:
            break
        assert time.monotonic() < deadline, "no relaunch"
        time.sleep(0.05)
    leftovers = [w for w in workers if psutil.pid_exists(w) and psutil.Process(w).status() != psutil.STATUS_ZOMBIE]
    return {"relaunch_delay_s": max(0.0, min(new.values()) - t_kill), "leftover_workers": len(leftovers),
            "workers_before": len(workers)}


def run_supervisor(root: Path, raw: Path, pre: Path, moment: str) -> dict[str, Any]:
    results = root / f"results_supervisor_{moment}"
    shutil.rmtree(results, ignore_errors=True)
    config = root / f"bench_{moment}.yaml"
    write_demo_config(config, raw, pre, results, nnunet={"trainer": TRAINER, "trainer_paths": [str(PLATEAU)]},
                      restart={"backoff_initial_s": 1, "backoff_max_s": 1},
                      cooperative={"enabled": True, "save_every_epochs": 4})
    fold = results / DATASET_NAME / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    sup = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    daemon = psutil.Process(sup.pid)
    t0 = time.monotonic()
    if moment == "ahead":
        measured = kill_and_measure(fold, lambda: verified_ahead(fold))
    else:
        while epoch_of(fold) < KILL_AT:
            time.sleep(0.2)
        measured = kill_and_measure(fold, just_written(fold))
    rss, torch_mapped = [], False
    while sup.poll() is None:
        try:
            rss.append(daemon.memory_info().rss)
            cpu = daemon.cpu_times()
            torch_mapped |= "libtorch" in Path(f"/proc/{sup.pid}/maps").read_text()
        except (psutil.Error, OSError):
            break
        time.sleep(0.5)
    wall = time.monotonic() - t0
    events = list(read_events(fold / "supervisor" / "events.jsonl"))
    backoff = next(e["delay_s"] for e in events if e["event"] == "backoff")
    verified = [e["ts"] for e in events if e["event"] == "checkpoint_verified"]
    measured["backoff_s"] = backoff
    measured["overhead_s"] = measured["relaunch_delay_s"] - backoff
    measured["verified"] = bool(verified)
    return {**measured, "exit": sup.wait(), "rss_max_mb": max(rss) / 2**20, "torch_in_daemon": torch_mapped,
            "cpu_share_pct": 100 * (cpu.user + cpu.system) / wall, "wall_s": wall}


def run_bash_loop(root: Path, raw: Path, pre: Path) -> dict[str, Any]:
    results = root / "results_bash"
    shutil.rmtree(results, ignore_errors=True)
    env = nnunet_env(raw, pre, results)
    env["nnUNet_extTrainer"] = str(TRAINERS)
    train = Path(sys.executable).parent / "nnUNetv2_train"
    script = f"until {train} 901 3d_fullres 0 -tr {DEMO_TRAINER} -device cpu --c; do :; done"
    loop = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    fold = results / DATASET_NAME / f"{DEMO_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    try:
        return kill_and_measure(fold)
    finally:
        os.killpg(loop.pid, signal.SIGKILL)
        loop.wait()
        for p in psutil.process_iter(["environ"]):
            if (p.info["environ"] or {}).get("nnUNet_results") == str(results):
                p.kill()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench").resolve()
    ROOT.append(str(root))
    raw, pre, _ = make_dataset(root)
    sup = run_supervisor(root, raw, pre, "ahead")
    worst = run_supervisor(root, raw, pre, "written")
    bash = run_bash_loop(root, raw, pre)
    mem_gib = psutil.virtual_memory().total / 2**30
    print(f"machine: {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, python {sys.version.split()[0]}")
    print(f"{'':34}{'supervisor':>14}{'supervisor':>14}{'bash until':>14}")
    print(f"{'':34}{'verified ahead':>14}{'just written':>14}{'loop':>14}")
    print(f"{'relaunch delay after SIGKILL (s)':34}{sup['relaunch_delay_s']:14.2f}{worst['relaunch_delay_s']:14.2f}"
          f"{bash['relaunch_delay_s']:14.2f}   (supervisor: backoff {sup['backoff_s']:.2f} / "
          f"{worst['backoff_s']:.2f} s)")
    print(f"{'  beyond the backoff (s)':34}{sup['overhead_s']:14.2f}{worst['overhead_s']:14.2f}"
          f"{bash['relaunch_delay_s']:14.2f}   (target <= 1 s; checkpoints verified before the relaunch: "
          f"{sup['verified']} / {worst['verified']})")
    print(f"{'old workers alive after relaunch':34}{sup['leftover_workers']:>14}{worst['leftover_workers']:>14}"
          f"{bash['leftover_workers']:>14}   (of {sup['workers_before']} / {worst['workers_before']} / "
          f"{bash['workers_before']})")
    print(f"daemon RSS max {sup['rss_max_mb']:.1f} MB (target <= 60), CPU {sup['cpu_share_pct']:.2f} % of a core "
          f"over {sup['wall_s']:.0f} s (target <= 1 %), libtorch mapped in daemon: {sup['torch_in_daemon']}, "
          f"supervised run exit {sup['exit']}")


if __name__ == "__main__":
    main()

"""Relaunch delay and daemon footprint, measured from outside, side by side with a bash `until` loop.

    .venv/bin/python bench/relaunch.py [WORKDIR]

Both variants train the demo trainer on the tiny CPU dataset; at epoch 3 the trainer's main process gets
SIGKILL. We then read, from /proc, when the next trainer process was created (the relaunch delay; for the
supervisor, minus the backoff delay it chose and logged, which is its own overhead: stopping the old tree and
verifying the checkpoint, which it does during the backoff) and how many of the killed trainer's
workers are still alive right after the relaunch. For the supervisor we also sample its RSS and CPU time
over the whole run and check that libtorch never appears in its memory map.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from supervisor.demo.dataset import DATASET_NAME, make_dataset, nnunet_env

TRAINERS = Path(__file__).resolve().parents[1] / "supervisor" / "demo" / "trainers"
KILL_AT = 3


def boot_time_of(pid: int) -> float:
    """When pid started, in seconds since boot: the kernel's own clock, so no wall-clock skew."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def trainers() -> dict[int, float]:
    """pid -> start time (since boot) of every nnUNetv2_train main process (not its workers)."""
    out = {}
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info["cmdline"] or []
        if any(c.endswith("nnUNetv2_train") for c in cmd[:2]):
            try:
                parent = psutil.Process(p.info["ppid"]).cmdline()
            except psutil.Error:
                parent = []
            if not any(c.endswith("nnUNetv2_train") for c in parent[:2]):
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


def kill_and_measure(fold: Path, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while epoch_of(fold) < KILL_AT:
        assert time.monotonic() < deadline, "trainer never reached the kill epoch"
        time.sleep(0.2)
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


def run_supervisor(root: Path, raw: Path, pre: Path) -> dict[str, Any]:
    results = root / "results_supervisor"
    shutil.rmtree(results, ignore_errors=True)
    config = root / "bench.yaml"
    config.write_text(json.dumps({
        "nnunet": {"dataset": 901, "configuration": "3d_fullres", "fold": 0, "trainer": "nnUNetTrainer_Demo",
                   "device": "cpu", "trainer_paths": [str(TRAINERS)],
                   "env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}},
        "paths": {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results)},
        "restart": {"backoff_initial_s": 10},  # the default: checkpoint verification runs during it
    }))
    fold = results / DATASET_NAME / "nnUNetTrainer_Demo__nnUNetPlans__3d_fullres" / "fold_0"
    sup = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    daemon = psutil.Process(sup.pid)
    t0 = time.monotonic()
    measured = kill_and_measure(fold)
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
    events = [json.loads(line) for line in (fold / "supervisor" / "events.jsonl").read_text().splitlines()]
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
    script = f"until {train} 901 3d_fullres 0 -tr nnUNetTrainer_Demo -device cpu --c; do :; done"
    loop = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    fold = results / DATASET_NAME / "nnUNetTrainer_Demo__nnUNetPlans__3d_fullres" / "fold_0"
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
    raw, pre, _ = make_dataset(root)
    sup = run_supervisor(root, raw, pre)
    bash = run_bash_loop(root, raw, pre)
    mem_gib = psutil.virtual_memory().total / 2**30
    print(f"machine: {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, python {sys.version.split()[0]}")
    print(f"{'':34}{'nnunet-supervise':>18}{'bash until loop':>18}")
    print(f"{'relaunch delay after SIGKILL (s)':34}{sup['relaunch_delay_s']:18.2f}{bash['relaunch_delay_s']:18.2f}"
          f"   (supervisor: backoff {sup['backoff_s']:.2f} s chosen)")
    print(f"{'  beyond the backoff (s)':34}{sup['overhead_s']:18.2f}{bash['relaunch_delay_s']:18.2f}"
          f"   (target <= 1 s; checkpoint verified before the relaunch: {sup['verified']})")
    print(f"{'old workers alive after relaunch':34}{sup['leftover_workers']:>18}{bash['leftover_workers']:>18}"
          f"   (of {sup['workers_before']} / {bash['workers_before']})")
    print(f"daemon RSS max {sup['rss_max_mb']:.1f} MB (target <= 60), CPU {sup['cpu_share_pct']:.2f} % of a core "
          f"over {sup['wall_s']:.0f} s (target <= 1 %), libtorch mapped in daemon: {sup['torch_in_daemon']}, "
          f"supervised run exit {sup['exit']}")


if __name__ == "__main__":
    main()

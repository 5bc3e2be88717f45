"""Goodput under faults: nnunet-supervise vs a bash `until nnUNetv2_train ... --c; do sleep 1; done` loop.

    .venv/bin/python bench/goodput.py [WORKDIR] [CAP_S]

The demo trainer (10 epochs of 3 iterations, save_every 2) trains the tiny dataset on the CPU four times: each
variant once fault-free and once under the same fault schedule, applied when the training log reaches an epoch:

    epoch 2: SIGKILL to the trainer
    epoch 4: checkpoint_latest.pth truncated to half, then SIGKILL to the trainer
    epoch 6: SIGTERM to the supervisor / the bash loop and its trainer, then the same command again
    epoch 8: SIGSTOP to the trainer (a hang)

The supervisor runs as recommended (cooperative mode; the stall floor lowered to 1 s, since these epochs take
seconds where a GPU run's take minutes). Every variant is capped at CAP_S seconds (default 420). It prints, per
variant, whether the run finished, the wall time, epochs redone, and fault-free / faulty wall time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from supervisor.demo.dataset import DATASET_NAME, make_dataset, nnunet_env
from supervisor.demo.runyaml import TRAINERS, write_demo_config
from supervisor.rundir.statefile import StateStore

TRAINER = "nnUNetTrainer_Demo"
SCHEDULE = {2: "kill", 4: "truncate+kill", 6: "sigterm+restart", 8: "hang"}


def fold_of(results: Path) -> Path:
    return results / DATASET_NAME / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"


def log_epochs(fold: Path) -> tuple[int, int]:
    """(current epoch of the newest training log, completed epoch entries over all logs)."""
    logs = sorted(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return -1, 0
    current = [int(x) for x in re.findall(r": Epoch (\d+) ?$", logs[-1].read_text(), re.M)]
    done = sum(p.read_text().count("Epoch time: ") for p in logs)
    return (current[-1] if current else -1), done


def trainer_pid(v: Variant, proc: subprocess.Popen[bytes]) -> int | None:
    """The trainer's main process: the supervisor names it in state.json; the bash loop's is its child."""
    if v.name.startswith("supervisor"):
        pid = StateStore(v.fold / "supervisor" / "state.json").load().get("pid")
        return pid if isinstance(pid, int) else None
    try:
        kids = psutil.Process(proc.pid).children()
    except psutil.Error:
        return None
    return next((k.pid for k in kids if "nnUNetv2_train" in " ".join(k.cmdline())), None)


def kill_everything(results: Path) -> None:
    for p in psutil.process_iter():
        try:
            if p.environ().get("nnUNet_results") == str(results):
                p.kill()
        except psutil.Error:
            pass


class Variant:
    def __init__(self, name: str, root: Path, raw: Path, pre: Path) -> None:
        self.name, self.results = name, root / f"results_goodput_{name}"
        shutil.rmtree(self.results, ignore_errors=True)
        self.fold = fold_of(self.results)
        self.env = {**nnunet_env(raw, pre, self.results), "nnUNet_extTrainer": str(TRAINERS),
                    "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}
        self.config = root / f"goodput_{name}.yaml"
        write_demo_config(self.config, raw, pre, self.results, nnunet={"trainer": TRAINER},
                          restart={"backoff_initial_s": 1, "backoff_max_s": 5},
                          heartbeat={"stall_timeout_s": "auto", "stall_floor_s": 1}, cooperative={"enabled": True})

    def start(self) -> subprocess.Popen[bytes]:
        if self.name.startswith("supervisor"):
            argv = [sys.executable, "-m", "supervisor", "run", str(self.config)]
        else:
            train = Path(sys.executable).parent / "nnUNetv2_train"
            argv = ["bash", "-c", f"until {train} 901 3d_fullres 0 -tr {TRAINER} -device cpu --c; do sleep 1; done"]
        return subprocess.Popen(argv, env={**os.environ, **self.env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)

    def finished(self) -> bool:
        return (self.fold / "checkpoint_final.pth").exists() and (self.fold / "validation" / "summary.json").exists()


def run(v: Variant, faults: bool, cap_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = v.start()
    pending = dict(SCHEDULE) if faults else {}
    applied: list[str] = []
    gap = 0.0  # the supervisor's longest main-loop gap (state.json), across its restarts
    try:
        while time.monotonic() - t0 < cap_s:
            if not v.name.startswith("bash"):
                seen = StateStore(v.fold / "supervisor" / "state.json").load().get("main_loop_max_gap_s")
                gap = max(gap, seen if isinstance(seen, (int, float)) else 0.0)
            if proc.poll() is not None and not v.name.startswith("bash"):
                break  # the supervisor exited (finished or gave up)
            if v.name.startswith("bash") and v.finished() and proc.poll() is not None:
                break
            epoch, _ = log_epochs(v.fold)
            due = [e for e in pending if epoch >= e]
            if due:
                what = pending.pop(min(due))
                pid = trainer_pid(v, proc)
                if what == "truncate+kill":
                    latest = v.fold / "checkpoint_latest.pth"
                    if latest.exists():
                        with open(latest, "r+b") as f:
                            f.truncate(latest.stat().st_size // 2)
                if what in ("kill", "truncate+kill") and pid:
                    os.kill(pid, signal.SIGKILL)
                elif what == "hang" and pid:
                    os.kill(pid, signal.SIGSTOP)
                elif what == "sigterm+restart":
                    if v.name.startswith("bash"):
                        os.killpg(proc.pid, signal.SIGTERM)  # the loop and its trainer, as a shutdown would
                    else:
                        proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    if v.name.startswith("bash"):
                        kill_everything(v.results)
                    proc = v.start()
                applied.append(f"{what}@{epoch}")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_everything(v.results)
    _, done = log_epochs(v.fold)
    if not v.name.startswith("bash"):
        seen = StateStore(v.fold / "supervisor" / "state.json").load().get("main_loop_max_gap_s")
        gap = max(gap, seen if isinstance(seen, (int, float)) else 0.0)
    return {"finished": v.finished(), "wall_s": time.monotonic() - t0, "completed_epochs": done,
            "redone": max(0, done - 10) if v.finished() else None, "faults": applied, "loop_gap_s": gap}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench").resolve()
    cap = float(sys.argv[2]) if len(sys.argv) > 2 else 420.0
    raw, pre, _ = make_dataset(root)
    rows = {}
    for name in ("supervisor", "bash"):
        for faults in (False, True):
            key = f"{name}{'_faults' if faults else ''}"
            rows[key] = run(Variant(key, root, raw, pre), faults, cap)
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; demo trainer, 10 epochs; cap {cap:.0f} s")
    print(f"{'variant':>18} {'finished':>9} {'wall (s)':>9} {'epochs redone':>14}  faults applied")
    for key, r in rows.items():
        redone = "-" if r["redone"] is None else str(r["redone"])
        print(f"{key:>18} {r['finished']!s:>9} {r['wall_s']:9.1f} {redone:>14}  {', '.join(r['faults']) or '-'}")
    print(f"supervisor: longest gap between two main-loop iterations {rows['supervisor_faults']['loop_gap_s']:.1f} s "
          f"under faults (verification, quarantine, stack dump, relaunches), {rows['supervisor']['loop_gap_s']:.1f} s "
          "without (the unit's WatchdogSec is 60)")
    for name in ("supervisor", "bash"):
        clean, faulty = rows[name], rows[f"{name}_faults"]
        ratio = clean["wall_s"] / faulty["wall_s"]
        print(f"{name}: fault-free / faulty wall time = {ratio:.2f}"
              + ("" if faulty["finished"] else " (faulty run did not finish: capped)"))


if __name__ == "__main__":
    main()

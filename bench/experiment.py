"""A whole experiment under one supervisor vs the plain sequential script a user would write.

    .venv/bin/python bench/experiment.py [WORKDIR] [SLOTS]

The tiny dataset, 2 configurations (2d, 3d_fullres) x 2 folds, the demo trainer (10 epochs of 3 iterations) on the
CPU, four runs measured in one go:

    experiment          nnunet-supervise run experiment.yaml (devices.slots = SLOTS, default 2; cooperative mode)
    experiment_faults   the same, with two faults: SIGKILL to a trainer at epoch 3 of two different folds
    script              for c in 2d 3d_fullres; for f in 0 1: until nnUNetv2_train ... [--c]; do sleep 1; done
                        then nnUNetv2_find_best_configuration (a careful user's retry loop)
    script_faults       the same, with the same two faults

It prints (a) the scheduler's idle time: how long a slot stayed free while a fold could have started, as a share of
the makespan; (b) each variant's makespan and the ratios experiment / script, fault-free and faulty; (c) the epochs
redone per fault (an epoch index completed more than once in a fold's training logs).
"""

from __future__ import annotations

import contextlib
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
import yaml

from supervisor.demo.dataset import DATASET_NAME, make_dataset, nnunet_env
from supervisor.demo.runyaml import QUIET_ENV, TRAINERS
from supervisor.rundir.eventlog import read_events

TRAINER = "nnUNetTrainer_Demo"
CELLS = [("2d", 0), ("2d", 1), ("3d_fullres", 0), ("3d_fullres", 1)]
FAULTS = {("2d", 1): 3, ("3d_fullres", 0): 3}  # SIGKILL to the trainer when its log reaches this epoch


def fold_dir(results: Path, configuration: str, fold: int) -> Path:
    return results / DATASET_NAME / f"{TRAINER}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def epochs_in(fold: Path) -> tuple[int, list[int]]:
    """(the newest log's current epoch, every completed epoch index over all logs)."""
    logs = sorted(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    completed: list[int] = []
    current = -1
    for log in logs:
        text = log.read_text(errors="replace")
        starts = [int(x) for x in re.findall(r": Epoch (\d+) ?$", text, re.M)]
        completed += starts[: text.count("Epoch time: ")]
        current = starts[-1] if starts else current
    return current, completed


def is_trainer(cmd: list[str]) -> bool:
    return any(c.endswith("nnUNetv2_train") for c in cmd[:2]) or cmd[1:3] == ["-m", "supervisor.trainer.launch"]


def trainer_pid(results: Path, configuration: str, fold: int) -> int | None:
    """The main trainer process of one fold: `... 901 <configuration> <fold> ...`, whose parent is not a trainer
    (its data-loading workers are)."""
    for p in psutil.process_iter(["cmdline", "environ", "ppid"]):
        cmd, env = p.info["cmdline"] or [], p.info["environ"] or {}
        if env.get("nnUNet_results") != str(results) or not is_trainer(cmd) or "901" not in cmd:
            continue
        i = cmd.index("901")
        if cmd[i + 1:i + 3] != [configuration, str(fold)]:
            continue
        try:
            if not is_trainer(psutil.Process(p.info["ppid"]).cmdline()):
                return p.pid
        except psutil.Error:
            continue
    return None


def experiment_file(root: Path, raw: Path, pre: Path, results: Path, slots: int) -> Path:
    path = root / "bench_experiment.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": {"configurations": ["2d", "3d_fullres"], "folds": [0, 1], "devices": {"slots": slots}},
        "nnunet": {"dataset": 901, "trainer": TRAINER, "device": "cpu", "trainer_paths": [str(TRAINERS)],
                   "env": dict(QUIET_ENV)},
        "paths": {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results)},
        "restart": {"backoff_initial_s": 1, "backoff_max_s": 5},
        "cooperative": {"enabled": True},
    }))
    return path


def script(results: Path) -> str:
    train = Path(sys.executable).parent / "nnUNetv2_train"
    best = Path(sys.executable).parent / "nnUNetv2_find_best_configuration"
    lines = ["set -u"]
    for configuration, fold in CELLS:
        args = f"901 {configuration} {fold} -tr {TRAINER} -device cpu --npz"
        lines.append(f"{train} {args} || until {train} {args} --c; do sleep 1; done")
    lines.append(f"{best} 901 -c 2d 3d_fullres -tr {TRAINER} -f 0 1")
    return "\n".join(lines)


def run(name: str, root: Path, raw: Path, pre: Path, slots: int, faults: bool, cap_s: float) -> dict[str, Any]:
    results = root / f"results_{name}"
    shutil.rmtree(results, ignore_errors=True)
    env = {**nnunet_env(raw, pre, results), "nnUNet_extTrainer": str(TRAINERS), **QUIET_ENV}
    if name.startswith("experiment"):
        argv = [sys.executable, "-m", "supervisor", "run", str(experiment_file(root, raw, pre, results, slots))]
    else:
        argv = ["bash", "-c", script(results)]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    pending = dict(FAULTS) if faults else {}
    applied = []
    try:
        while proc.poll() is None and time.monotonic() - t0 < cap_s:
            for (configuration, fold), at in list(pending.items()):
                current, _ = epochs_in(fold_dir(results, configuration, fold))
                pid = trainer_pid(results, configuration, fold) if current >= at else None
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    applied.append(f"kill {configuration}/{fold}@{current}")
                    del pending[(configuration, fold)]
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    makespan = time.monotonic() - t0
    # a trainer SIGKILLed under the plain script leaves its augmentation workers running, re-parented to init but
    # still in the run's process group: count them, then end them (they would skew the next variant and benches)
    left = [p for p in psutil.process_iter() if pgid_of(p.pid) == proc.pid]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    redone = {}
    for configuration, fold in CELLS:
        _, completed = epochs_in(fold_dir(results, configuration, fold))
        redone[f"{configuration}/{fold}"] = len(completed) - len(set(completed))
    done = all((fold_dir(results, c, f) / "checkpoint_final.pth").exists() for c, f in CELLS)
    best = (results / DATASET_NAME / "inference_instructions.txt").exists()
    return {"makespan_s": makespan, "finished": done and best and proc.returncode == 0, "redone": redone,
            "faults": applied, "results": results, "slots": slots, "left_behind": len(left)}


def pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def idle_share(results: Path, slots: int, makespan: float) -> float:
    """Slot-seconds free while a cell was waiting to start, over makespan (no dependencies between these cells)."""
    layout = results / DATASET_NAME / "nnunet-supervise__bench_experiment" / "events.jsonl"
    events = [e for e in read_events(layout) if e["event"] in ("fold_started", "fold_ended", "experiment_started")]
    if not events:
        return float("nan")
    t, running, unstarted, idle = events[0]["ts"], 0, len(CELLS), 0.0
    for e in events:
        if running < slots and unstarted > 0:
            idle += (e["ts"] - t) * min(slots - running, unstarted)
        t = e["ts"]
        if e["event"] == "fold_started":
            running, unstarted = running + 1, unstarted - 1
        elif e["event"] == "fold_ended":
            running -= 1
    return idle / makespan


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench").resolve()
    slots = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    raw, pre, _ = make_dataset(root)
    rows = {name: run(name, root, raw, pre, slots, name.endswith("faults"), 1800.0)
            for name in ("experiment", "script", "experiment_faults", "script_faults")}
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; 2 configurations x 2 folds, demo trainer "
          f"(10 epochs), slots {slots}")
    print(f"{'variant':>18} {'finished':>9} {'makespan (s)':>13}  epochs redone per fold  faults")
    for name, r in rows.items():
        faults = ", ".join(r["faults"]) or "-"
        print(f"{name:>18} {r['finished']!s:>9} {r['makespan_s']:13.1f}  {r['redone']}  {faults}")
    for suffix in ("", "_faults"):
        e, s = rows[f"experiment{suffix}"], rows[f"script{suffix}"]
        print(f"makespan experiment / script{suffix or ' (fault-free)'}: {e['makespan_s'] / s['makespan_s']:.2f}")
    for name in ("experiment", "experiment_faults"):
        r = rows[name]
        print(f"{name}: scheduler idle (a slot free while a fold waited) = "
              f"{100 * idle_share(r['results'], slots, r['makespan_s']):.2f} % of the makespan (aim <= 2 %)")
    for name in ("experiment_faults", "script_faults"):
        r = rows[name]
        count = max(1, len(r["faults"]))
        print(f"{name}: epochs redone per fault = {sum(r['redone'].values()) / count:.2f}")
    print("processes of the run still alive after it ended: "
          + ", ".join(f"{name} {r['left_behind']}" for name, r in rows.items()))


if __name__ == "__main__":
    main()

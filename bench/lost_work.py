"""Work lost to a SIGKILL, plain vs cooperative mode, on the same custom trainer, side by side in one run.

    .venv/bin/python bench/lost_work.py [WORKDIR] [ROUNDS]

The trainer keeps nnU-Net's save_every = 50. Each round trains it under the supervisor, SIGKILLs the trainer
at a random moment after a random number of epochs, and counts the epochs the relaunch redoes (epochs completed
before the kill minus the epoch it resumed at). Two trainers: tests/trainers/nnUNetTrainer_Sparse.py as is
(on this tiny dataset its EMA dice improves every epoch, so checkpoint_best.pth is rewritten every epoch and
plain mode resumes from it), and bench/trainers/nnUNetTrainer_SparsePlateau.py, the same late in a long
training when the best is no longer beaten (save_every is then the only save: nnU-Net's default loss).
Then two fault-free runs per mode time training from the first epoch to "Training done." (saves included):
the overhead of saving every epoch, as a ratio to plain.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from supervisor.daemon.process import stop_tree
from supervisor.demo.dataset import DATASET_NAME, make_dataset
from supervisor.demo.runyaml import write_demo_config
from supervisor.rundir.statefile import StateStore

SPARSE = Path(__file__).resolve().parents[1] / "tests" / "trainers"
PLATEAU = Path(__file__).resolve().parent / "trainers"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): (.*)$", re.M)


def configure(root: Path, raw: Path, pre: Path, name: str, cooperative: bool,
              trainer: str = "nnUNetTrainer_Sparse") -> tuple[Path, Path]:
    results = root / f"results_{name}"
    shutil.rmtree(results, ignore_errors=True)
    config = root / f"{name}.yaml"
    write_demo_config(config, raw, pre, results,
                      nnunet={"trainer": trainer, "trainer_paths": [str(SPARSE), str(PLATEAU)]},
                      restart={"backoff_initial_s": 1, "backoff_max_s": 1},
                      cooperative={"enabled": cooperative, "save_every_epochs": 1},
                      # a kill that leaves nothing resumable then costs every epoch, rather than ending the round
                      checkpoint={"allow_fresh_start": True})
    return config, results / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


def logs(fold: Path) -> list[str]:
    return [p.read_text() for p in sorted(fold.glob("training_log_*.txt"))]


def completed(log: str) -> int:
    return log.count("Epoch time: ")


def started_epochs(log: str) -> list[int]:
    return [int(m) for m in re.findall(r": Epoch (\d+) ?$", log, re.M)]


def wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop_all(sup: subprocess.Popen[bytes], fold: Path) -> None:
    if sup.poll() is None:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(timeout=120)
        except subprocess.TimeoutExpired:
            sup.kill()
    stop_tree(None, str(fold), grace_s=0)  # the run's whole tree, by its marker: nothing survives


def kill_round(root: Path, raw: Path, pre: Path, name: str, cooperative: bool, trainer: str) -> int:
    config, fold = configure(root, raw, pre, name, cooperative, trainer)
    sup = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        target = random.randint(2, 5)
        wait(lambda: bool(logs(fold)) and completed(logs(fold)[0]) >= target, 300, f"epoch {target}")
        time.sleep(random.uniform(0.0, 3.0))
        state = StateStore(fold / "supervisor" / "state.json").load()
        os.kill(state["pid"], signal.SIGKILL)
        done = completed(logs(fold)[0])
        wait(lambda: len(logs(fold)) >= 2 and bool(started_epochs(logs(fold)[1])), 300, "the resumed attempt")
        return done - started_epochs(logs(fold)[1])[0]
    finally:
        stop_all(sup, fold)


def training_seconds(root: Path, raw: Path, pre: Path, name: str, cooperative: bool) -> float:
    config, fold = configure(root, raw, pre, name, cooperative)
    r = subprocess.run([sys.executable, "-m", "supervisor", "run", str(config)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 0, f"{name}: exit {r.returncode}"
    stamps = {text.strip(): datetime.fromisoformat(ts) for ts, text in STAMP.findall(logs(fold)[0])
              if text.strip() in ("Epoch 0", "Training done.")}
    return (stamps["Training done."] - stamps["Epoch 0"]).total_seconds()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench").resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    raw, pre, _ = make_dataset(root)
    trainers = ("nnUNetTrainer_Sparse", "nnUNetTrainer_SparsePlateau")
    modes = ("plain", "cooperative")
    redone: dict[tuple[str, str], list[int]] = {(t, m): [] for t in trainers for m in modes}
    for n in range(rounds):  # interleaved, so drift on a noisy machine hits both modes alike
        for trainer in trainers:
            for mode in modes:
                redone[trainer, mode].append(
                    kill_round(root, raw, pre, f"lost_{trainer}_{mode}_{n}", mode == "cooperative", trainer))
    seconds: dict[str, list[float]] = {"plain": [], "cooperative": []}
    for n in range(2):
        for mode in ("plain", "cooperative"):
            seconds[mode].append(training_seconds(root, raw, pre, f"time_{mode}_{n}", mode == "cooperative"))
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; trainers keep save_every 50, "
          f"6-8 epochs of 5 iterations, CPU; {rounds} SIGKILLs per trainer and mode at random moments")
    for trainer in trainers:
        for mode in modes:
            r = redone[trainer, mode]
            print(f"{trainer:>28} {mode:>12}: epochs redone per SIGKILL {r} (mean {statistics.mean(r):.2f}, "
                  f"max {max(r)})")
        p, c = statistics.mean(redone[trainer, "plain"]), statistics.mean(redone[trainer, "cooperative"])
        print(f"{trainer:>28}: plain / cooperative mean epochs redone = "
              + (f"{p / c:.1f}x" if c else f"{p:.2f} / 0 (cooperative redid nothing)"))
    worst = max(max(redone[t, "cooperative"]) for t in trainers)
    print(f"cooperative worst: {worst} epoch(s) redone (target <= 1: {'met' if worst <= 1 else 'NOT met'})")
    ratio = statistics.mean(seconds["cooperative"]) / statistics.mean(seconds["plain"])
    print(f"training time, first epoch to 'Training done.' (s): plain {seconds['plain']}, cooperative "
          f"{seconds['cooperative']}; cooperative / plain = {ratio:.3f}")


if __name__ == "__main__":
    main()

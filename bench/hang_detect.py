"""Hang detection latency with `stall_timeout_s: auto`, and what the monitoring costs, on real CPU training.

    .venv/bin/python bench/hang_detect.py [WORKDIR] [ROUNDS]

The demo trainer trains the tiny dataset under the supervisor with the automatic stall timeout (2 x the
longest recent epoch; the floor lowered to 1 s, since its epochs take seconds where a GPU run's take minutes).
Epochs 2-7 measure the daemon's own CPU time (target: <= 1 % of a core while training). Then the trainer's
main process gets SIGSTOP at a random moment inside an epoch; we time SIGSTOP -> the `stall` event and set it
beside the run's median epoch time (target: <= 3x).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from supervisor.daemon.process import stop_tree
from supervisor.demo.dataset import DATASET_NAME, make_dataset
from supervisor.demo.runyaml import write_demo_config
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore


def one_round(root: Path, raw: Path, pre: Path, n: int) -> dict[str, Any]:
    results = root / f"results_hang_{n}"
    shutil.rmtree(results, ignore_errors=True)  # a finished earlier round would end this one at once
    config = root / f"hang_{n}.yaml"
    write_demo_config(config, raw, pre, results,
                      restart={"backoff_initial_s": 1, "backoff_max_s": 1, "max_restarts": 0},
                      heartbeat={"stall_timeout_s": "auto", "stall_floor_s": 1})
    fold = results / DATASET_NAME / "nnUNetTrainer_Demo__nnUNetPlans__3d_fullres" / "fold_0"
    state_file, events_file = fold / "supervisor" / "state.json", fold / "supervisor" / "events.jsonl"
    sup = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    daemon = psutil.Process(sup.pid)

    def state() -> dict[str, Any]:
        return StateStore(state_file).load()

    def reach(epoch: int) -> None:
        deadline = time.monotonic() + 300
        while (state().get("epoch") or 0) < epoch:
            assert time.monotonic() < deadline and sup.poll() is None, f"the trainer never reached epoch {epoch}"
            time.sleep(0.2)

    reach(2)
    cpu0, t0 = daemon.cpu_times(), time.monotonic()
    reach(7)
    cpu1, t1 = daemon.cpu_times(), time.monotonic()
    time.sleep(random.uniform(0.0, 2.5))  # somewhere inside an epoch
    pid = state()["pid"]
    stopped_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        sup.wait(timeout=300)  # max_restarts 0: it gives up after the stall, so the round ends there
    finally:
        if sup.poll() is None:
            sup.kill()
        stop_tree(None, str(fold), grace_s=0)  # the run's whole tree, by its marker: nothing survives
    events = list(read_events(events_file))
    stall = next(e for e in events if e["event"] == "stall")
    times = state().get("epoch_times") or []
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"latency_s": stall["ts"] - stopped_at, "median_epoch_s": statistics.median(times),
            "timeout_s": stall["timeout_s"], "cpu_pct": 100 * busy / max(t1 - t0, 1e-6)}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench").resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    raw, pre, _ = make_dataset(root)
    out = [one_round(root, raw, pre, n) for n in range(rounds)]
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; {rounds} rounds")
    print(f"{'round':>5} {'SIGSTOP->stall (s)':>19} {'median epoch (s)':>17} {'ratio':>6} {'auto timeout (s)':>17}")
    for n, r in enumerate(out):
        print(f"{n:5d} {r['latency_s']:19.2f} {r['median_epoch_s']:17.2f} {r['latency_s'] / r['median_epoch_s']:6.2f}"
              f" {r['timeout_s']:17.1f}")
    worst = max(r["latency_s"] / r["median_epoch_s"] for r in out)
    print(f"worst latency / median epoch = {worst:.2f}x (target <= 3x: {'met' if worst <= 3 else 'NOT met'})")
    cpu = max(r["cpu_pct"] for r in out)
    print(f"daemon CPU while training (watchdog observer + polling), worst round: {cpu:.2f} % of a core "
          f"(target <= 1 %)")


if __name__ == "__main__":
    main()

"""The supervisor daemon's own footprint during a real CPU training: RSS, CPU share, no libtorch.

    .venv/bin/python bench/footprint.py [WORKDIR]

Trains the demo dataset (10 epochs) under the supervisor, cooperative mode on, and samples the daemon process
(not its children) every 0.5 s from the first epoch to the end of training: RSS (max), CPU time / wall time
(the share of one core), and whether libtorch is mapped into it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from supervisor.demo.dataset import DATASET_NAME, make_dataset
from supervisor.demo.runyaml import write_demo_config


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench").resolve()
    raw, pre, _ = make_dataset(root)
    results = root / "results_footprint"
    shutil.rmtree(results, ignore_errors=True)
    config = root / "footprint.yaml"
    write_demo_config(config, raw, pre, results, cooperative={"enabled": True})
    fold = results / DATASET_NAME / "nnUNetTrainer_Demo__nnUNetPlans__3d_fullres" / "fold_0"
    sup = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    daemon = psutil.Process(sup.pid)
    rss, torch_mapped, t0, cpu0 = 0, False, None, None
    while sup.poll() is None:
        logs = list(fold.glob("training_log_*.txt"))
        text = logs[0].read_text() if logs else ""
        try:
            if t0 is None and "Epoch time:" in text:
                t0, cpu0 = time.monotonic(), daemon.cpu_times()
            if t0 is not None and "Training done." not in text:
                rss = max(rss, daemon.memory_info().rss)
                torch_mapped |= any("libtorch" in m.path for m in daemon.memory_maps())
                t1, cpu1 = time.monotonic(), daemon.cpu_times()
        except psutil.Error:
            break
        time.sleep(0.5)
    assert t0 is not None and cpu0 is not None, "the training never completed an epoch"
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; supervisor exit {sup.returncode}")
    print(f"daemon RSS max {rss / 2**20:.1f} MB; CPU {100 * busy / (t1 - t0):.2f} % of a core over "
          f"{t1 - t0:.0f} s of training; libtorch mapped: {torch_mapped}")


if __name__ == "__main__":
    main()

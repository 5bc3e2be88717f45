"""What one kill costs a preprocessing: nnU-Net's own `nnUNetv2_plan_and_preprocess` started again (a bash loop, or a
person) against `nnunet-supervise preprocess`, side by side on the same raw dataset, in one run.

    .venv/bin/python bench/preprocess_resume.py [WORKDIR] [CASES]     (default: a temporary folder, 40 cases)

Each tool preprocesses 3d_fullres and 2d with one process, once without interruption and once SIGKILLed (its whole
process group, as a preemption or the OOM killer would) when half of 3d_fullres's cases are written, then run to the
end (nnU-Net's tool: started again by hand; ours: relaunched by the supervisor). Printed: wall-clock of each run,
the minutes a kill cost (interrupted minus uninterrupted) and the cases preprocessed twice. Aim: the supervised
preprocessing loses only the case in flight, nnU-Net's loses all that was done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from supervisor.demo.dataset import DATASET_ID, DATASET_NAME, nnunet_env, write_raw_dataset

CONFIGURATIONS = ["3d_fullres", "2d"]


def fullres_written(pre: Path) -> int:
    folder = pre / DATASET_NAME / "nnUNetPlans_3d_fullres"
    return len(list(folder.glob("*.pkl"))) if folder.is_dir() else 0


def nnunet_argv() -> list[str]:
    tool = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    return [str(tool), "-d", str(DATASET_ID), "-c", *CONFIGURATIONS, "-np", "1", "1", "-npfp", "1",
            "--verify_dataset_integrity"]


def ours(root: Path) -> list[str]:
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "nnunet": {"dataset": DATASET_ID, "configuration": "3d_fullres", "device": "cpu"},
        "paths": {"nnUNet_raw": str(root.parent / "raw"), "nnUNet_preprocessed": str(root / "pre"),
                  "nnUNet_results": str(root / "res")},
        "restart": {"backoff_initial_s": 1},
        "preprocess": {"configurations": CONFIGURATIONS, "num_processes": 1}}))
    return [sys.executable, "-m", "supervisor", "preprocess", str(config)]


def run(root: Path, tool: str, kill_at: int | None) -> tuple[float, int]:
    """(wall-clock seconds to a complete dataset, cases of 3d_fullres written before the kill and written again)."""
    pre = root / "pre"
    for d in (pre, root / "res"):
        d.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(root.parent / "raw", pre, root / "res")
    log = open(root / f"{tool}.log", "ab")
    t0 = time.monotonic()
    if tool == "nnunet":
        proc = subprocess.Popen(nnunet_argv(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if kill_at is not None:
            while fullres_written(pre) < kill_at and proc.poll() is None:
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = subprocess.Popen(nnunet_argv(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            killed = fullres_written(pre)
        assert proc.wait() == 0, f"nnU-Net's preprocessing failed: see {root / 'nnunet.log'}"
        # its rmtree of the configuration's folder: every case written before the kill is written again
        return time.monotonic() - t0, 0 if kill_at is None else killed
    sup = subprocess.Popen(ours(root), stdout=log, stderr=subprocess.STDOUT)
    if kill_at is not None:
        state = pre / DATASET_NAME / "supervisor" / "state.json"
        while fullres_written(pre) < kill_at and sup.poll() is None:
            time.sleep(0.05)
        pid = json.loads(state.read_text())["pid"]
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # the shim's session: its main process and its pool
        killed = fullres_written(pre)
    assert sup.wait() == 0, f"the supervised preprocessing failed: see {root / 'ours.log'}"
    if kill_at is None:
        return time.monotonic() - t0, 0
    second = (pre / DATASET_NAME / "supervisor" / "attempt-2.log").read_text()
    kept = re.search(r"configuration 3d_fullres: (\d+) of", second)
    return time.monotonic() - t0, killed - (int(kept.group(1)) if kept else 0)


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    cases = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    write_raw_dataset(work / "raw", cases)
    print(f"{cases} cases of {DATASET_NAME}, configurations {' '.join(CONFIGURATIONS)}, one process; in {work}")
    rows = []
    for tool in ("nnunet", "ours"):
        plain, _ = run(work / f"{tool}-plain", tool, None)
        killed, redone = run(work / f"{tool}-killed", tool, cases // 2)
        rows.append((tool, plain, killed))
        print(f"{tool:7s} uninterrupted {plain / 60:5.2f} min   killed at {cases // 2}/{cases} cases of 3d_fullres "
              f"and finished {killed / 60:5.2f} min   the kill cost {(killed - plain) / 60:5.2f} min, "
              f"{redone} case(s) preprocessed twice", flush=True)
    (_, n_plain, n_killed), (_, o_plain, o_killed) = rows
    lost_n, lost_o = n_killed - n_plain, o_killed - o_plain
    print(f"minutes lost per kill: nnU-Net's own {lost_n / 60:.2f}, supervised {lost_o / 60:.2f} "
          f"({lost_n / max(lost_o, 1e-9):.1f}x less)" if lost_o > 0 else
          f"minutes lost per kill: nnU-Net's own {lost_n / 60:.2f}, supervised {lost_o / 60:.2f}")
    print(f"uninterrupted, supervised / nnU-Net's own: {o_plain / n_plain:.2f}")


if __name__ == "__main__":
    main()

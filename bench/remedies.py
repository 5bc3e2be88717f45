"""The fault matrix of recovery by cause, run once with remedies off (the old behaviour: the same command every
time) and once on, side by side on the tiny CPU dataset.

    .venv/bin/python bench/remedies.py [WORKDIR]     (root: a memory cgroup and a private /dev/shm)

Faults, each real:
  host_oom       the supervisor in a cgroup v1 memory child with a limit between one and two hungry workers'
                 worth (tests/trainers/nnUNetTrainer_Hungry: each worker holds 1500 MiB); nnU-Net's default count
  shm_exhausted  a private mount namespace whose /dev/shm is a 256 KiB tmpfs (torch cannot hand batches over)
  compile_error  a trainer that compiles on CPU as nnU-Net does on CUDA, with no working C++ compiler for inductor
  validation_oom the demo trainer with nnU-Net's default export pool (8 spawned processes, ~650 MiB each) in a memory
                 cgroup of VALIDATION_LIMIT_BYTES: the final validation is OOM-killed
  one_cpu        the demo trainer with nnU-Net's own counts under `taskset -c 0` (nnU-Net sizes from the host's CPUs)
(CUDA out of memory needs a GPU: not in this matrix.)

For the first three the modes are remedies off / on; for validation_oom and one_cpu they are prevention
(remedies.fit_allocation: the counts fitted before the launch) off / on, with the reactive remedies on in both.
Printed per fault and mode: exit code (0 finished, 1 gave up), failed attempts, wall-clock, the remedies applied, the
counts sized. Aim: every fault that gives up with remedies off finishes with them on; prevention saves the failed
attempts and the minutes they cost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from supervisor.context import RunContext
from supervisor.demo.dataset import make_dataset
from supervisor.demo.runyaml import write_demo_config
from supervisor.evidence.memory import memory_cgroup
from supervisor.rundir.eventlog import read_events

REPO = Path(__file__).resolve().parents[1]
TRAINERS = REPO / "tests" / "trainers"
LIMIT_BYTES = int(3.4 * 2**30)  # between 1 and 2 hungry workers (measured: 2.6 and 4.1 GiB peak RSS)
VALIDATION_LIMIT_BYTES = int(3.5 * 2**30)  # the trainer and 1-2 export processes fit, nnU-Net's 8 do not
PREVENTION = ("validation_oom", "one_cpu")  # faults whose modes are remedies.fit_allocation off / on


def config_for(fault: str, root: Path, raw: Path, pre: Path, remedies: bool) -> Path:
    env: dict[str, str] = {} if fault in PREVENTION else {"nnUNet_def_n_proc": "1"}  # nnU-Net's own counts
    trainer = {"host_oom": "nnUNetTrainer_Hungry", "shm_exhausted": "nnUNetTrainer_Short",
               "compile_error": "nnUNetTrainer_Compiling", "validation_oom": "nnUNetTrainer_Demo",
               "one_cpu": "nnUNetTrainer_Demo"}[fault]
    if fault == "compile_error":
        env.update({"nnUNet_n_proc_DA": "1", "CXX": "/nonexistent/c++"})
    folder = root / f"{fault}-{'on' if remedies else 'off'}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # the first three show the reactive ladder: the counts fitted before the launch (which would prevent the host OOM
    # here) stay off for them
    switches = {"fit_allocation": remedies} if fault in PREVENTION else {"enabled": remedies, "fit_allocation": False}
    paths = [str(TRAINERS), str(REPO / "supervisor" / "demo" / "trainers")]
    return write_demo_config(folder / "run.yaml", raw, pre, folder / "results",
                             nnunet={"trainer": trainer, "trainer_paths": paths, "env": env},
                             restart={"backoff_initial_s": 1, "backoff_max_s": 5, "max_attempts_without_progress": 3},
                             process={"stop_grace_s": 20}, remedies=switches)


def prefix_for(fault: str, cgroup: Path | None) -> list[str]:
    if fault in ("host_oom", "validation_oom"):
        assert cgroup is not None
        (cgroup / "memory.limit_in_bytes").write_text(str(LIMIT_BYTES if fault == "host_oom"
                                                           else VALIDATION_LIMIT_BYTES))
        return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "join"]
    if fault == "one_cpu":
        return ["taskset", "-c", "0"]
    if fault == "shm_exhausted":
        return ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs /dev/shm && exec "$@"', "shm"]
    return []


def run(fault: str, root: Path, raw: Path, pre: Path, remedies: bool, cgroup: Path | None) -> dict[str, Any]:
    config = config_for(fault, root, raw, pre, remedies)
    start = time.monotonic()
    with open(config.with_suffix(".log"), "ab") as out:
        code = subprocess.run([*prefix_for(fault, cgroup), sys.executable, "-m", "supervisor", "run", str(config)],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800).returncode
    wall = time.monotonic() - start
    evs = list(read_events(RunContext.load(config).layout.events_file))
    return {"code": code, "wall_s": wall, "restarts": sum(e["event"] == "backoff" for e in evs),
            "causes": sorted({f"{e.get('cause')} in {e.get('phase')}" for e in evs
                              if e["event"] == "exit" and e.get("cause")}),
            "remedies": [f"{e['variable']} {e['from']}->{e['to']}" for e in evs if e["event"] == "remedy"],
            "sized": next((e.get("sized") for e in evs if e["event"] == "launch"), None) or {}}


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (a memory cgroup, a private /dev/shm)")
        return 2
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-bench-remedies")
    raw, pre, _ = make_dataset(Path(os.environ.get("NNUNET_SUPERVISE_TEST_CACHE", root / "dataset")))
    cg = memory_cgroup(os.getpid())
    cgroup = cg.path / f"nnunet-supervise-bench-{os.getpid()}" if cg else None
    faults = sys.argv[2:] or ["host_oom", "shm_exhausted", "compile_error", "validation_oom", "one_cpu"]
    if cgroup is None:
        print("no cgroup v1 memory controller: host_oom and validation_oom left out")
        faults = [f for f in faults if f not in ("host_oom", "validation_oom")]
    else:
        cgroup.mkdir()
    results: dict[tuple[str, bool], dict[str, Any]] = {}
    try:
        for fault in faults:
            for remedies in (False, True):
                r = run(fault, root, raw, pre, remedies, cgroup)
                results[(fault, remedies)] = r
                mode = "prevention" if fault in PREVENTION else "remedies"
                print(f"{fault:14} {mode} {'on ' if remedies else 'off'}: exit {r['code']} "
                      f"({'finished' if r['code'] == 0 else 'gave up'}), {r['restarts']} restart(s), "
                      f"{r['wall_s'] / 60:.1f} min; causes {', '.join(r['causes']) or '-'}; "
                      f"remedies {', '.join(r['remedies']) or '-'}; sized {r['sized'] or '-'}", flush=True)
    finally:
        if cgroup is not None:
            cgroup.rmdir()
    off = sum(results[(f, False)]["code"] == 0 for f in faults)
    on = sum(results[(f, True)]["code"] == 0 for f in faults)
    print(f"\nfinished: off {off}/{len(faults)}, on {on}/{len(faults)}")
    for f in faults:
        a, b = results[(f, False)], results[(f, True)]
        print(f"  {f:14} off: {'finished' if a['code'] == 0 else 'gave up'} after {a['wall_s'] / 60:.1f} min, "
              f"{a['restarts']} restarts; on: {'finished' if b['code'] == 0 else 'gave up'} after "
              f"{b['wall_s'] / 60:.1f} min, {b['restarts']} restarts; on / off wall time "
              f"{b['wall_s'] / max(a['wall_s'], 1e-9):.2f}")
    return 0 if on == len(faults) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The demo: a real supervised CPU training of a tiny dataset, one injected crash, resumed to the end.

    python -m supervisor.demo [FOLDER]      (default: /tmp/nnunet-supervise-demo)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from supervisor.checkpoints.meta import read_meta
from supervisor.context import RunContext
from supervisor.demo.dataset import make_dataset
from supervisor.demo.runyaml import write_demo_config
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore
from supervisor.stages.training.traininglog import read_progress

KILL_AT_EPOCH = 5
COMMENT = """A supervised nnU-Net training of the tiny demo dataset on the CPU: the demo trainer trains
10 epochs of 3 iterations and saves a checkpoint every 2nd epoch."""


def say(msg: str) -> None:
    print(f"\n=== demo: {msg}", flush=True)


def state(ctx: RunContext) -> dict[str, Any]:
    return StateStore(ctx.layout.state_file).load()


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nnunet-supervise-demo").resolve()
    root.mkdir(parents=True, exist_ok=True)
    say(f"making the tiny synthetic dataset in {root} (about a minute the first time)")
    raw, pre, _ = make_dataset(root)
    results = root / "demo_results"
    shutil.rmtree(results, ignore_errors=True)  # the demo's own results: start every demo from scratch
    config = write_demo_config(root / "run.yaml", raw, pre, results, restart={"backoff_initial_s": 2},
                               comment=COMMENT)
    ctx = RunContext.load(config)
    say(f"supervising: nnunet-supervise run {config}")
    sup = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)], stdin=subprocess.DEVNULL)
    killed = False
    try:
        while sup.poll() is None:
            st = state(ctx)
            if not killed and (st.get("epoch") or 0) >= KILL_AT_EPOCH and st.get("pid"):
                say(f"injecting a fault: SIGKILL to the trainer (pid {st['pid']}) during epoch {st['epoch']}")
                os.kill(st["pid"], signal.SIGKILL)
                killed = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        sup.send_signal(signal.SIGINT)
        return sup.wait()
    code = sup.returncode
    say(f"supervisor exited with {code}")
    for ev in read_events(ctx.layout.events_file):
        extra = {k: v for k, v in ev.items() if k not in ("ts", "event", "argv")}
        print(f"  {time.strftime('%H:%M:%S', time.localtime(ev['ts']))}  {ev['event']:<10} {extra}")
    logs = ctx.layout.training_logs()
    if len(logs) > 1:
        print(f"  attempt 2 resumed at epoch {read_progress(logs[-1]).first_epoch} (from checkpoint_latest.pth)")
    final = ctx.layout.checkpoint("checkpoint_final.pth")
    if final.exists():
        print(f"  {final.name}: epoch {read_meta(final).current_epoch}; run folder {ctx.layout.fold_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())

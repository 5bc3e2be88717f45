"""Stands in for nnUNetv2_train in the runner's tests (the integration tests run the real one).

Behaviour per attempt comes from $FAKE_PLAN, a JSON list: {"epochs": [start, end], "outcome": ...}.
`write_progress` writes what nnU-Net would (training log lines, checkpoints, the final files) into the fold folder;
run as a script it then behaves as the outcome says. The runner's tests without processes (FakeOps in conftest)
use `write_progress` alone.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def write_progress(plan: dict[str, Any], fold: Path, attempt: int) -> list[str]:
    """The files an attempt of this plan leaves behind; returns what it prints."""
    printed = []
    start, end = plan.get("epochs", [0, 0])
    if plan.get("no_checkpoint"):  # what nnU-Net 2.8 prints when --c finds nothing to load
        printed.append("WARNING: Cannot continue training because there seems to be no checkpoint available to "
                       "continue from. Starting a new training...")
    with open(fold / f"training_log_2026_1_1_00_00_{attempt:02d}.txt", "a") as log:
        for epoch in range(start, end):
            log.write(f"2026-01-01 00:00:00.000000: Epoch {epoch} \n")
            if plan.get("loss"):
                log.write(f"2026-01-01 00:00:01.000000: train_loss {plan['loss']} \n")
            log.write("2026-01-01 00:00:01.000000: Epoch time: 1.0 s\n")
            log.flush()
    if plan.get("checkpoint"):  # leave a checkpoint behind, as nnU-Net's save_every does
        (fold / "checkpoint_latest.pth").write_bytes(Path(plan["checkpoint"]).read_bytes())
    if plan["outcome"] in ("finish", "linger"):
        (fold / "checkpoint_final.pth").write_bytes(b"not a real checkpoint")
        (fold / "validation").mkdir(exist_ok=True)
        (fold / "validation" / "summary.json").write_text("{}")
    if plan["outcome"] == "crash":
        printed.append("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: boom")
    if plan["outcome"] == "incompatible":
        printed.append("Traceback (most recent call last):\nRuntimeError: Error(s) in loading state_dict for "
                       "PlainConvUNet:\n\tMissing key(s) in state_dict: \"decoder.seg_layers.4.weight\"")
    if plan.get("print"):  # what the attempt says before it ends (a worker's traceback, a CUDA OOM, ...)
        printed.append(plan["print"])
    if plan["outcome"] == "disk_full":
        printed.append("nnunet-supervise: disk full: saving checkpoint_latest.pth failed: [Errno 28] No space left "
                       "on device")
    return printed


def main() -> None:
    attempt = int(os.environ["NNUNET_SUPERVISE_ATTEMPT"])
    plan = json.loads(os.environ["FAKE_PLAN"])[attempt - 1]
    fold = Path.cwd()
    print("argv:", " ".join(sys.argv[1:]), flush=True)
    for line in write_progress(plan, fold, attempt):
        print(line, flush=True)
    outcome = plan["outcome"]
    if outcome == "finish":
        sys.exit(0)
    if outcome in ("crash", "incompatible"):
        sys.exit(1)
    if outcome == "linger":  # finished everything, then does not exit (nnU-Net issue #842)
        time.sleep(600)
    if outcome == "cooperate":  # the shim's contract: SIGUSR1 -> save at the epoch end, exit 75
        def save_and_exit(signum: int, frame: object) -> None:
            (fold / "checkpoint_latest.pth").write_bytes(b"saved on request")
            print("nnunet-supervise: stop requested (SIGUSR1); exiting 75", flush=True)
            sys.exit(75)

        signal.signal(signal.SIGUSR1, save_and_exit)
        print("cooperating", flush=True)
        time.sleep(600)
    if outcome == "disk_full":
        sys.exit(74)
    if outcome == "hang":
        print("hanging", flush=True)
        time.sleep(600)
    sys.exit(int(outcome))


if __name__ == "__main__":
    main()

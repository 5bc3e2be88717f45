"""Part 2 of scripts/gpu-check.sh: a real supervised kill-and-resume on the GPU, with step-level saves.

    python bench/gpu/kill_resume.py --data .gpu-carry/data --work DIR --device cuda --json OUT.json

`python -m supervisor run run.yaml` trains the tiny dataset in cooperative mode (snapshot_every_s 1, 0.4 s steps,
8 an epoch, 3 epochs). Once epoch 1 is under way and a snapshot inside it was written (written.json records a
step), the trainer gets SIGKILL; the supervisor must notice, wait for the GPU memory to be freed and relaunch with
--c. Inside epoch 2 of the relaunch the supervisor gets SIGTERM: exit 75, checkpoint_latest.pth carries
nnunet_supervise_step. A second `run` must finish (exit 0, checkpoint_final.pth, validation/summary.json) having
redone no step of epoch 2. Measured: the relaunch delay (SIGKILL -> next launch event), how long the killed pid
held GPU memory after the SIGKILL (NVML, polled every 50 ms), the stop's latency, each attempt's GPU memory peak.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    TRAINER,
    TRAINERS,
    CheckFailed,
    GpuSampler,
    cleanup,
    copy_dataset,
    events,
    finish,
    leftovers,
    mib,
    on_sigterm_raise,
    read_json,
    run_cli,
    say,
    start_supervisor,
    trainer_env,
    wait_for,
)

STEPS, EPOCHS = 8, 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--step-s", type=float, default=0.4)
    ap.add_argument("--check", action="store_true", help="run `nnunet-supervise check` first")
    args = ap.parse_args()
    on_sigterm_raise()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"part": "kill_resume", "device": args.device, "ok": False, "steps": []}
    sups: list[Any] = []
    sampler = GpuSampler(args.device)
    result["gpu_sampler"] = sampler.note

    def step(name: str, **facts: Any) -> None:
        result["steps"].append({"step": name, "t": round(time.time(), 3), **facts})
        say(f"{name} {facts if facts else ''}")

    try:
        from supervisor.demo.runyaml import write_demo_config
        pre, res = copy_dataset(args.data, work)
        steps_file = work / "steps.txt"
        env = trainer_env(GPU_CHECK_EPOCHS=str(EPOCHS), GPU_CHECK_STEPS=str(STEPS), GPU_CHECK_STEP_S=str(args.step_s),
                          GPU_CHECK_STEPS_FILE=str(steps_file))
        config = write_demo_config(
            work / "run.yaml", None, pre, res,
            comment="scripts/gpu-check.sh part 2: SIGKILL inside an epoch, then a stop, then the end",
            nnunet={"trainer": TRAINER, "trainer_paths": [str(TRAINERS)], "device": args.device, "env": env},
            cooperative={"enabled": True, "save_every_epochs": 1, "snapshot_every_s": 1.0},
            restart={"backoff_initial_s": 1, "backoff_max_s": 5})
        from supervisor.context import RunContext
        layout = RunContext.load(config).layout
        sup_dir, fold = layout.supervisor_dir, layout.fold_dir
        result["fold_dir"] = str(fold)

        def ran(epoch: int) -> int:
            try:
                return steps_file.read_text().split().count(str(epoch))
            except OSError:
                return 0

        if args.check:
            code = run_cli(["check", str(config)], work / "check.log", 120)
            step("check", exit=code)
            if code != 0:
                raise CheckFailed(f"`nnunet-supervise check` exited {code} (check.log)")

        sampler.start()
        t_start = time.time()
        sups.append(start_supervisor(config, work / "supervisor-run1.log"))
        sup = sups[-1]

        def snapshot_inside_epoch_1() -> Any:
            rec = (read_json(sup_dir / "written.json") or {}).get("checkpoint_latest.pth") or {}
            return ran(1) >= 5 and rec.get("epoch") == 1 and isinstance(rec.get("step"), int) and rec

        rec = wait_for(snapshot_inside_epoch_1, 240, "a snapshot inside epoch 1", interval_s=0.05, alive=sup)
        beat = read_json(sup_dir / "heartbeat.json") or {}
        pid = int(beat["pid"])
        first_launch = next((e for e in events(sup_dir / "events.jsonl") if e.get("event") == "launch"), {})
        step("snapshot_seen", snapshot_step=rec.get("step"), steps_run_epoch1=ran(1), trainer_pid=pid,
             startup_s=round(first_launch.get("ts", t_start) - t_start, 2))
        held_before = sampler.sample().get(pid) if sampler.enabled else None
        killed_at_steps = ran(1)
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        step("sigkill", pid=pid, gpu_mib_before=mib(held_before), steps_run_epoch1=killed_at_steps)
        freed_s = None
        if sampler.enabled:
            wait_for(lambda: not sampler.holds(pid), 90, "the killed trainer's GPU memory freed", interval_s=0.02)
            freed_s = round(time.time() - t_kill, 3)

        def launch2() -> Any:
            return next((e for e in events(sup_dir / "events.jsonl")
                         if e.get("event") == "launch" and e.get("attempt") == 2), None)

        ev2 = wait_for(launch2, 120, "the relaunch (launch event of attempt 2)", alive=sup)
        evs = events(sup_dir / "events.jsonl")
        exit1 = next((e for e in evs if e.get("event") == "exit" and e.get("attempt") == 1), {})
        backoff = next((e for e in evs if e.get("event") == "backoff"), {})
        log_text = (work / "supervisor-run1.log").read_text(errors="replace")
        result["relaunch"] = {
            "exit_seen_s": round(exit1.get("ts", t_kill) - t_kill, 3),
            "exit_classification": exit1.get("classification"), "exit_returncode": exit1.get("returncode"),
            "backoff_delay_s": backoff.get("delay_s"),
            "relaunch_delay_s": round(ev2["ts"] - t_kill, 3),
            "gpu_memory_freed_after_kill_s": freed_s,
            # the supervisor waits (runner._wait_gpu_memory, up to 60 s) and logs only when it gives up waiting
            "supervisor_gpu_wait_warning": [ln for ln in log_text.splitlines() if "still hold GPU memory" in ln],
        }
        step("relaunched", **result["relaunch"])
        if exit1.get("classification") != "killed_by_signal":
            raise CheckFailed(f"attempt 1's exit was classified {exit1.get('classification')!r}, not killed_by_signal")

        wait_for(lambda: 2 <= ran(2) <= 4, 240, "epoch 2 under way in attempt 2", interval_s=0.05, alive=sup)
        t_term = time.time()
        sup.send_signal(signal.SIGTERM)
        code = sup.wait(150)
        step("sigterm_to_supervisor", exit=code, stop_latency_s=round(time.time() - t_term, 3),
             steps_run_epoch2=ran(2))
        if code != 75:
            raise CheckFailed(f"the stopped supervisor exited {code}, not 75")

        from supervisor.checkpoints.probe import check_content  # the supervisor's own weights-only load
        saved, load_problems, _ = check_content(str(fold / "checkpoint_latest.pth"), {})
        if saved is None or load_problems:
            raise CheckFailed(f"checkpoint_latest.pth does not load weights-only: {load_problems}")
        inside = saved.get("nnunet_supervise_step")
        result["step_record"] = inside and {k: v for k, v in inside.items() if k != "outputs"}
        step("checkpoint_latest", current_epoch=saved.get("current_epoch"), nnunet_supervise_step=result["step_record"])
        if not inside or inside.get("epoch") != 2 or inside.get("steps_total") != STEPS \
                or not 2 <= inside.get("steps_done", -1) < STEPS or inside["steps_done"] != ran(2):
            raise CheckFailed(f"checkpoint_latest.pth's nnunet_supervise_step is {result['step_record']}, "
                              f"expected epoch 2 with {ran(2)} of {STEPS} steps done")

        sups.append(start_supervisor(config, work / "supervisor-run2.log"))
        code = sups[-1].wait(240)
        evs = events(sup_dir / "events.jsonl")
        final, summary = fold / "checkpoint_final.pth", fold / "validation" / "summary.json"
        result["finish"] = {"exit": code, "checkpoint_final": final.is_file(), "validation_summary": summary.is_file(),
                            "steps_per_epoch_run": {e: ran(e) for e in range(EPOCHS)},
                            "redone_steps_epoch1": ran(1) - STEPS, "redone_steps_epoch2": ran(2) - STEPS,
                            "left_running": [p for p in leftovers(work)]}
        step("second_run", **result["finish"])
        result["attempts"] = [{k: e.get(k) for k in ("event", "attempt", "returncode", "classification", "resume",
                                                       "epochs_completed", "phase", "delay_s", "pid")}
                              for e in evs if e.get("event") in ("launch", "exit", "backoff", "finished")]
        if sampler.enabled:
            pids = [e.get("pid") for e in evs if e.get("event") == "launch"]
            result["gpu_peak_mib_by_attempt"] = {str(i + 1): mib(sampler.peaks.get(p)) for i, p in enumerate(pids)}
        problems = []
        if code != 0:
            problems.append(f"the second run exited {code}, not 0")
        if not final.is_file() or not summary.is_file():
            problems.append("no checkpoint_final.pth or validation/summary.json")
        if ran(2) != STEPS:
            problems.append(f"epoch 2 ran {ran(2)} steps over its attempts, not {STEPS} (the stop cost steps)")
        if result["finish"]["left_running"]:
            problems.append(f"processes of the run left: {result['finish']['left_running']}")
        if problems:
            raise CheckFailed("; ".join(problems))
        r = result["relaunch"]
        result["ok"] = True
        result["summary"] = (f"SIGKILL at step {killed_at_steps}/{STEPS} of epoch 1 -> relaunch after "
                             f"{r['relaunch_delay_s']} s (backoff {r['backoff_delay_s']} s), GPU memory freed "
                             f"{r['gpu_memory_freed_after_kill_s']} s after the kill; SIGTERM -> exit 75, step "
                             f"{inside['steps_done']}/{STEPS} of epoch 2 saved; resumed to the end (exit 0), "
                             f"epoch 1 redid {ran(1) - STEPS} step(s), epoch 2 none")
    except CheckFailed as exc:
        result["summary"] = str(exc)
    except Exception as exc:  # a bug or an unforeseen state: reported, the next part still runs
        result["summary"] = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        result["killed_at_cleanup"] = cleanup(work, sups)
        sampler.stop()
        if sampler.enabled:
            result["gpu_peaks_mib_by_pid"] = {str(p): mib(v) for p, v in sampler.peaks.items()}
    return finish(result, args.json, "part2_kill_resume")


if __name__ == "__main__":
    raise SystemExit(main())

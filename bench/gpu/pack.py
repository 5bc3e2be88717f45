"""Part 3 of scripts/gpu-check.sh: two folds packed on one GPU by an experiment, run to the end.

    python bench/gpu/pack.py --data .gpu-carry/data --work DIR --device cuda --json OUT.json

An experiment file (README "Experiments") with folds 0 and 1 of 3d_fullres, `experiment.devices.gpus: [0]`,
`per_gpu: 2` (on the CPU dry run: `slots: 2`), cooperative mode, no find_best. Checked: exit 0, both folds
finished, both trainers held the GPU at the same time. Recorded: each fold's GPU memory peak as NVML showed it
(sampled here every 50 ms, by the trainer pids in the folds' events), and what the supervisor itself recorded of
their memory (the experiment's `fold_need` events; state.json keys naming memory or a peak).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DATASET,
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
    say,
    start_supervisor,
    trainer_env,
)


def memory_keys(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Every key of a state.json (nested) whose name speaks of memory or a peak, with its value."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            path = f"{prefix}{k}"
            if any(w in str(k).lower() for w in ("mem", "peak", "need", "vram")):
                out[path] = v
            out.update(memory_keys(v, path + "."))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=240)
    args = ap.parse_args()
    on_sigterm_raise()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"part": "pack_two_folds", "device": args.device, "ok": False}
    sups: list[Any] = []
    sampler = GpuSampler(args.device)
    result["gpu_sampler"] = sampler.note
    try:
        pre, res = copy_dataset(args.data, work)
        devices = {"gpus": [0], "per_gpu": 2} if args.device == "cuda" else {"slots": 2}
        doc = {
            "experiment": {"configurations": ["3d_fullres"], "folds": [0, 1], "devices": devices, "find_best": False},
            "nnunet": {"dataset": 901, "trainer": TRAINER, "device": args.device, "trainer_paths": [str(TRAINERS)],
                       "env": trainer_env(GPU_CHECK_EPOCHS=str(args.epochs), GPU_CHECK_STEPS=str(args.steps))},
            "paths": {"nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)},
            "restart": {"backoff_initial_s": 1, "backoff_max_s": 5},
            "cooperative": {"enabled": True},
        }
        config = work / "experiment.yaml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        result["experiment"] = doc["experiment"]
        sampler.start()
        t0 = time.time()
        sups.append(start_supervisor(config, work / "experiment-supervisor.log"))
        deadline = time.monotonic() + args.timeout
        while sups[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if sups[0].poll() is None:
            raise CheckFailed(f"the experiment did not finish within {args.timeout:.0f} s")
        code = sups[0].returncode
        wall = round(time.time() - t0, 1)
        base = res / DATASET
        exp_dir = base / f"nnunet-supervise__{config.name}"
        if not exp_dir.is_dir():  # the naming rule of the README; otherwise the one such folder there is
            exp_dir = next(iter(sorted(base.glob("nnunet-supervise__*"))), exp_dir)
        exp_events = events(exp_dir / "events.jsonl")
        folds: dict[str, Any] = {}
        for f in (0, 1):
            fdir = base / f"{TRAINER}__nnUNetPlans__3d_fullres" / f"fold_{f}"
            fev = events(fdir / "supervisor" / "events.jsonl")
            pids = [e.get("pid") for e in fev if e.get("event") == "launch"]
            state = read_json(fdir / "supervisor" / "state.json") or {}
            started = [e for e in exp_events if e.get("event") == "fold_started" and e.get("fold") in (f, str(f))]
            folds[str(f)] = {
                "finished": (fdir / "checkpoint_final.pth").is_file()
                and (fdir / "validation" / "summary.json").is_file(),
                "state": state.get("state"), "trainer_pids": pids,
                "device": started[-1].get("device") if started else None,
                "nvml_peak_mib": max((mib(sampler.peaks.get(p)) or 0 for p in pids), default=None)
                if sampler.enabled else None,
                "nvml_held_s": round(max(sampler.last_seen[p] for p in pids if p in sampler.last_seen)
                                     - min(sampler.first_seen[p] for p in pids if p in sampler.first_seen), 2)
                if sampler.enabled and any(p in sampler.first_seen for p in pids) else None,
                "supervisor_state_memory_keys": memory_keys(state),
            }
        result.update(exit=code, wall_s=wall, folds=folds,
                      supervisor_fold_need_events=[e for e in exp_events if e.get("event") == "fold_need"],
                      experiment_events=[{k: v for k, v in e.items() if k != "argv"} for e in exp_events],
                      gpu_samples=sampler.samples, samples_with_two_pids=sampler.together,
                      max_pids_at_once=sampler.max_together, left_running=leftovers(work))
        spans = []
        for key in ("0", "1"):
            st = [e["ts"] for e in exp_events if e.get("event") == "fold_started" and str(e.get("fold")) == key]
            en = [e["ts"] for e in exp_events if e.get("event") == "fold_ended" and str(e.get("fold")) == key]
            if st and en:
                spans.append((min(st), max(en)))
        result["folds_overlap_s"] = round(min(e for _, e in spans) - max(s for s, _ in spans), 2) \
            if len(spans) == 2 else None
        say(f"experiment exit {code} after {wall} s; folds overlapped {result['folds_overlap_s']} s; folds {folds}")
        problems = []
        if code != 0:
            problems.append(f"the experiment exited {code}, not 0")
        problems += [f"fold {f} did not finish" for f, v in folds.items() if not v["finished"]]
        if not (result["folds_overlap_s"] or 0) > 0:
            problems.append(f"the folds did not run at the same time (overlap {result['folds_overlap_s']} s)")
        if sampler.enabled and sampler.max_together < 2:
            problems.append("the two folds' trainers never held the GPU at the same time")
        if result["left_running"]:
            problems.append(f"processes left: {result['left_running']}")
        if problems:
            raise CheckFailed("; ".join(problems))
        peaks = {f: v["nvml_peak_mib"] for f, v in folds.items()}
        recorded = "the supervisor recorded " + (
            f"{len(result['supervisor_fold_need_events'])} fold_need event(s)" if result["supervisor_fold_need_events"]
            else "no peak of its own (no fold_need event, no memory key in the folds' state.json)"
            if not any(v["supervisor_state_memory_keys"] for v in folds.values())
            else "memory keys in state.json")
        result["ok"] = True
        gpu = f"NVML peaks MiB {peaks}, {sampler.max_together} trainer(s) on the GPU at once; " \
            if sampler.enabled else f"no GPU sampling ({sampler.note}); "
        result["summary"] = (f"2 folds on {'GPU 0' if args.device == 'cuda' else 'the CPU (2 slots)'} in {wall} s "
                             f"(overlapping {result['folds_overlap_s']} s), both finished; {gpu}{recorded}")
    except CheckFailed as exc:
        result["summary"] = str(exc)
    except Exception as exc:
        result["summary"] = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        result["killed_at_cleanup"] = cleanup(work, sups)
        sampler.stop()
        if sampler.enabled:
            result["gpu_peaks_mib_by_pid"] = {str(p): mib(v) for p, v in sampler.peaks.items()}
    return finish(result, args.json, "part3_pack_two_folds")


if __name__ == "__main__":
    raise SystemExit(main())

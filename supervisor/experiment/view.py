"""Looking at an experiment: `status` (a table of configuration x fold, or JSON) and `report` (folds as bars over
wall time per device). Read from the files only: the experiment's state.json and events.jsonl and each fold's own
run directory; works while it runs, after it ended, and without its lock."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from supervisor.experiment import cvsummary
from supervisor.experiment.context import ExperimentContext
from supervisor.observe.prediction import pipeline_status
from supervisor.observe.progress import duration
from supervisor.observe.report import summary, timeline
from supervisor.observe.status import gather
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore


def status(exp: ExperimentContext, now: float | None = None) -> dict[str, Any]:
    """The experiment and every cell: state, epoch / num_epochs, device, restarts, checkpoint age, ETA."""
    now = time.time() if now is None else now
    live = RunLock(exp.layout.lock_file).is_held_elsewhere()
    state = StateStore(exp.layout.state_file).load()
    cells_state = {(c.get("trainer"), c.get("plans"), str(c.get("configuration")), str(c.get("fold"))): c
                   for c in state.get("cells") or [] if isinstance(c, dict)}
    folds, etas, durations = [], [], []
    for cell in exp.cells:
        layout = exp.fold_layout(cell)
        fold_live = RunLock(layout.lock_file).is_held_elsewhere()
        info = gather(layout, fold_live, now, validation=False)  # cvsummary reads the validations
        ours = cells_state.get((cell.trainer, cell.plans, cell.configuration, str(cell.fold)), {})
        fold_state = "finished" if info["finished"] else info["state"]
        if fold_state == "never run" and ours.get("status") in ("failed",):
            fold_state = "failed"
        folds.append({**cell.fields(), "state": fold_state,
                      "epoch": info["epoch"], "num_epochs": info["num_epochs"], "device": ours.get("device"),
                      "restarts": info["restarts"], "last_checkpoint_age_s": info["last_checkpoint_age_s"],
                      "eta_s": info["eta_s"], "supervisor_alive": fold_live, "reason": ours.get("reason")})
        if info["eta_s"] is not None:
            etas.append(info["eta_s"])
        times = StateStore(layout.state_file).load().get("epoch_times") or []
        if info["num_epochs"] and times:
            durations.append(info["num_epochs"] * statistics.median(times))
    waiting = sum(f["state"] not in ("finished", "running", "failed") for f in folds)
    slots = max(1, sum(f["supervisor_alive"] for f in folds))
    eta = None
    if live and etas:  # the longest running fold, then the waiting ones, as many at once as run now
        eta = max(etas) + (statistics.median(durations) * waiting / slots if waiting and durations else 0.0)
    return {"state": state.get("state", "never run") if live or state else "never run",
            "supervisor_alive": live, "exit_code": state.get("exit_code"), "experiment_dir": str(exp.layout.root),
            "finished": sum(f["state"] == "finished" for f in folds), "cells": len(folds),
            "eta_s": None if eta is None else round(eta, 1), "folds": folds,
            "inference_instructions": str(exp.layout.root / "inference_instructions.txt")
            if (exp.layout.root / "inference_instructions.txt").is_file() else None,
            "cross_validation": cvsummary.summary(exp),
            **({"predict": pipeline_status(exp.predict_layout().output)} if exp.predicts else {})}


def table(info: dict[str, Any]) -> str:
    """The status as a person reads it."""
    head = (f"experiment {info['experiment_dir']}\n"
            f"state      {info['state']}{' (supervisor running)' if info['supervisor_alive'] else ''}; "
            f"{info['finished']}/{info['cells']} folds finished"
            + (f", about {duration(info['eta_s'])} to go" if info["eta_s"] is not None else "") + "\n")
    rows = [("configuration", "fold", "state", "epoch", "device", "restarts", "checkpoint", "ETA")]
    groups: list[tuple[int, str]] = []  # a study: (row index, "trainer x plans") before each group's rows
    for f in info["folds"]:
        if "trainer" in f and (not groups or groups[-1][1] != f"{f['trainer']} x {f['plans']}"):
            groups.append((len(rows), f"{f['trainer']} x {f['plans']}"))
        shown = f["num_epochs"] if f["state"] == "finished" and f["num_epochs"] else f["epoch"]  # index -> count
        epoch = "-" if shown is None else f"{shown}" + (f"/{f['num_epochs']}" if f["num_epochs"] else "")
        age = "-" if f["last_checkpoint_age_s"] is None else f"{duration(f['last_checkpoint_age_s'])} ago"
        eta = "-" if f["eta_s"] is None else duration(f["eta_s"])
        rows.append((f["configuration"], str(f["fold"]), f["state"] + (f" ({f['reason']})" if f["reason"] and
                                                                        f["state"] != "finished" else ""),
                     epoch, str(f["device"] or "-"), str(f["restarts"]), age, eta))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for at, title in reversed(groups):  # grouped by trainer and plans
        lines.insert(at, f"{title}:")
    body = "\n".join(lines)
    tail = "".join("\n" + line for line in cvsummary.lines(info.get("cross_validation")))
    tail += f"\nbest configuration: {info['inference_instructions']}" if info["inference_instructions"] else ""
    pred = info.get("predict")
    if pred:
        tail += "\n" + prediction_line(pred)
    return head + body + tail


def prediction_line(p: dict[str, Any]) -> str:
    """The experiment's prediction in one line: its step, that step's cases, the final outputs, the ETA."""
    total = p.get("cases_total")
    step = ""
    if p.get("step"):
        steps = p.get("steps") or []
        k = f" ({steps.index(p['step']) + 1}/{len(steps)})" if p["step"] in steps else ""
        step = f", step {p['step']}{k}: {p.get('step_cases_done') or 0}/{total} cases"
        if p.get("eta_s") is not None:
            step += f", about {duration(p['eta_s'])} left in this step"
    failed = f", failed: {', '.join(p['cases_failed'])}" if p.get("cases_failed") else ""
    return (f"prediction: {p.get('state')}{step}; {p.get('cases_done')}/{total} final outputs verified{failed} "
            f"({p.get('output')})")


def bars(exp: ExperimentContext) -> list[dict[str, Any]]:
    """One bar per fold supervisor start: cell, device, start, end, how it ended (from the experiment's events)."""
    out: list[dict[str, Any]] = []
    open_: dict[tuple[str, str], dict[str, Any]] = {}  # (study/configuration, fold)
    last = time.time()
    for e in read_events(exp.layout.events_file):
        study = f"{e['trainer']}__{e.get('plans')}/" if e.get("trainer") else ""
        key = (study + str(e.get("configuration")), str(e.get("fold")))
        if e["event"] == "fold_started":
            open_[key] = {"cell": f"{key[0]}/fold_{key[1]}", "device": str(e.get("device")), "start": e["ts"],
                          "end": None, "code": None, "reason": None}
            out.append(open_[key])
        elif e["event"] == "fold_ended" and key in open_:
            open_.pop(key).update(end=e["ts"], code=e.get("code"), reason=e.get("reason"))
        last = e["ts"]
    for bar in out:
        if bar["end"] is None:
            bar["end"] = max(last, time.time()) if RunLock(exp.layout.lock_file).is_held_elsewhere() else last
    return out


def report(exp: ExperimentContext) -> dict[str, Any]:
    """Makespan, goodput (kept training time over makespan x devices used) and each fold's own numbers."""
    drawn = bars(exp)
    folds = {}
    kept = 0.0
    for cell in exp.cells:
        numbers = summary(timeline(exp.fold_layout(cell)))
        folds[cell.name] = numbers
        kept += numbers["kept_training_s"]
    start = min((b["start"] for b in drawn), default=0.0)
    end = max((b["end"] for b in drawn), default=start)
    devices = sorted({b["device"] for b in drawn})
    makespan = max(end - start, 1e-9)
    # folds at once, at most: the slots the experiment really used (a CPU's slots, a GPU's packed folds)
    edges = sorted([(b["start"], 1) for b in drawn] + [(b["end"], -1) for b in drawn])
    width, most = 0, 1
    for _, step in edges:
        width += step
        most = max(most, width)
    return {"makespan_s": round(makespan, 1), "devices": devices, "fold_starts": len(drawn),
            "failures": sum(1 for b in drawn if b["code"] not in (0, None)), "parallel": most,
            "goodput": round(kept / (makespan * most), 4), "folds": folds, "bars": drawn,
            "cross_validation": cvsummary.summary(exp)}


def report_lines(numbers: dict[str, Any]) -> list[str]:
    """What `report EXPERIMENT` prints after its fold lines: the cross-validation block (empty before a fold
    finished)."""
    return cvsummary.lines(numbers.get("cross_validation"))


def gantt(exp: ExperimentContext, out: Path) -> dict[str, Any]:
    """Draw folds as bars over wall time, one row per device; failures in red, downtime as gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = report(exp)
    drawn = numbers["bars"]
    start = min((b["start"] for b in drawn), default=0.0)
    lanes: dict[str, list[float]] = {}  # device -> end of each lane (folds sharing a device stack)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.6 * max(1, len(drawn))), dpi=110)
    colours = plt.get_cmap("tab10")
    configs = sorted({b["cell"].split("/")[0] for b in drawn})
    y = 0
    ticks, labels = [], []
    for device in numbers["devices"]:
        mine = sorted((b for b in drawn if b["device"] == device), key=lambda b: b["start"])
        lanes[device] = []
        for b in mine:
            lane = next((i for i, end in enumerate(lanes[device]) if end <= b["start"]), None)
            if lane is None:
                lanes[device].append(0.0)
                lane = len(lanes[device]) - 1
            lanes[device][lane] = b["end"]
            row = y + lane
            failed = b["code"] not in (0, None)
            ax.barh(row, (b["end"] - b["start"]) / 60, left=(b["start"] - start) / 60, height=0.7,
                    color=colours(configs.index(b["cell"].split("/")[0]) % 10), alpha=0.85,
                    edgecolor="crimson" if failed else "black", linewidth=2 if failed else 0.5)
            label = b["cell"] + (f"  (exit {b['code']}{': ' + b['reason'] if b['reason'] else ''})" if failed else "")
            ax.text((b["start"] - start) / 60, row, " " + label, va="center", fontsize=7,
                    color="crimson" if failed else "black")
        for lane in range(max(1, len(lanes[device]))):
            ticks.append(y + lane)
            labels.append(f"{device} [{lane}]" if len(lanes[device]) > 1 else device)
        y += max(1, len(lanes[device]))
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set_xlabel("wall time (min)")
    ax.set_title(f"{exp.config_path.name}: goodput {numbers['goodput']:.0%}  ·  makespan "
                 f"{duration(numbers['makespan_s'])}  ·  fold starts {numbers['fold_starts']}  ·  "
                 f"failures {numbers['failures']}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return numbers

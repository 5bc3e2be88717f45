"""`nnunet-supervise status`: what a person (or a script, with --json) wants to know about a run, read from its
run directory only (works while it runs, after it ended, and without the lock)."""

from __future__ import annotations

import time
from typing import Any

from supervisor.checkpoints.meta import CheckpointError, read_meta
from supervisor.core.classify import NOT_FAILURES
from supervisor.layout import RunLayout
from supervisor.observe.progress import checkpoint_age_s, eta_s, num_epochs
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore


def gather(layout: RunLayout, live: bool, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    state = StateStore(layout.state_file).load()
    events = list(read_events(layout.events_file))
    total = state.get("num_epochs") or num_epochs(layout.fold_dir)
    epoch = state.get("epoch")
    ckpt_epochs = []
    for path in layout.existing_checkpoints():  # final, latest, best: the newest epoch among them
        try:
            ckpt_epochs.append(read_meta(path).current_epoch)
        except CheckpointError:
            continue
    ckpt_epoch = max((e for e in ckpt_epochs if e is not None), default=None)
    eta = eta_s(epoch, total, state.get("epoch_times") or []) if live else None
    failures = [e for e in events if e["event"] == "exit" and e.get("classification") not in NOT_FAILURES]
    last_failure = ({k: failures[-1].get(k) for k in ("ts", "attempt", "classification", "retryable", "summary",
                                                      "cause", "cause_summary", "evidence") if k in failures[-1]}
                    if failures else None)
    remedies = state.get("remedies")
    remedies = remedies if isinstance(remedies, dict) else {}
    gpu = next((e for e in reversed(events) if e["event"] in ("gpu_fault", "gpu_health")), None)
    age = checkpoint_age_s(layout.fold_dir, now)
    return {
        "state": state.get("state", "never run"),
        "supervisor_alive": live,
        "epoch": epoch,
        "num_epochs": total,
        "attempt": state.get("attempt", 0),
        "restarts": state.get("restarts", 0),
        "best_epoch": state.get("best_epoch"),
        "last_checkpoint_epoch": ckpt_epoch,
        "last_checkpoint_age_s": None if age is None else round(age, 1),
        "eta_s": None if eta is None else round(eta, 1),
        "pid": state.get("pid") if live else None,
        "last_failure": last_failure,
        "last_exit": state.get("last_exit"),
        "remedies": remedies.get("env") if isinstance(remedies.get("env"), dict) else {},
        "remedy_history": [e for e in events if e["event"] == "remedy"],
        "gpu": gpu,
        "finished": layout.is_finished(),
        "checkpoints": [p.name for p in layout.existing_checkpoints()],
        "run_dir": str(layout.supervisor_dir),
        "last_event": events[-1] if events else None,
    }


def text(info: dict[str, Any], where: object) -> str:
    """`status` for a person."""
    live = info["supervisor_alive"]
    lines = [f"run        {where}",
             f"state      {info['state']}{' (supervisor running)' if live else ''}",
             f"attempt    {info['attempt']} (restarts {info['restarts']})"]
    total = f"/{info['num_epochs']}" if info["num_epochs"] else ""
    eta = f", about {info['eta_s'] / 60:.0f} min to go" if info["eta_s"] is not None else ""
    lines.append(f"epoch      {info['epoch']}{total} (furthest {info['best_epoch']}){eta}")
    age = info["last_checkpoint_age_s"]
    lines.append(f"checkpoints {', '.join(info['checkpoints']) or 'none'}"
                 + (f" (newest: epoch {info['last_checkpoint_epoch']}, {age:.0f} s ago)" if age is not None else ""))
    if info["last_failure"]:
        lf = info["last_failure"]
        lines.append(f"last failure {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(lf['ts']))} attempt "
                     f"{lf['attempt']}: {lf['classification']}"
                     + (f" (cause {lf['cause']}: {lf.get('cause_summary')})" if lf.get("cause") else ""))
    if info["remedies"]:
        lines.append("remedies   " + ", ".join(f"{k}={v}" for k, v in info["remedies"].items())
                     + " (" + "; ".join(f"attempt {r.get('attempt')}: {r.get('variable')} {r.get('from')} -> "
                                        f"{r.get('to')} after {r.get('cause')}" for r in info["remedy_history"]) + ")")
    if info["last_exit"]:
        le = info["last_exit"]
        lines.append(f"last exit  attempt {le.get('attempt')}: {le.get('classification')} - {le.get('summary')}")
    if info["last_event"]:
        ev = info["last_event"]
        lines.append(f"last event {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ev['ts']))} {ev['event']}")
    return "\n".join(lines)

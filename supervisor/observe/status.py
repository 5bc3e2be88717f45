"""`nnunet-supervise status`: what a person (or a script, with --json) wants to know about a run, read from its
run directory only (works while it runs, after it ended, and without the lock)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.checkpoints.meta import CheckpointError, read_meta
from supervisor.core.classify import NOT_FAILURES
from supervisor.fileread import read_bytes
from supervisor.layout import RunLayout
from supervisor.observe.progress import checkpoint_age_s, eta_s, num_epochs
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.statefile import StateStore

SUMMARY_LIMIT = 256 << 20  # summary.json holds every validation case's metrics: megabytes, not gigabytes


@dataclass(frozen=True)
class ValidationSummary:
    """nnU-Net's evaluation of a set of validation cases (validation/summary.json of a fold, or find_best's
    crossval_results_folds_*/summary.json): `foreground_mean` Dice, and per label or region its `mean` Dice.
    `state`: "done" (read), "missing" (not written: the validation has not finished), "unreadable" (`problem` says
    why: torn, not JSON, keys missing or of the wrong type). A "done" summary whose foreground Dice is NaN (nnU-Net
    writes NaN for a label absent from every case and never predicted) has dice None and a `note` saying so."""

    state: str
    dice: float | None = None
    labels: dict[str, float] = field(default_factory=dict)  # nnU-Net's label key ("1", "(1, 2)") -> mean Dice
    cases: int | None = None
    problem: str | None = None
    mtime: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "dice": self.dice, "labels": self.labels, "cases": self.cases,
                **({"problem": self.problem} if self.problem else {}), **({"note": self.note} if self.note else {})}


def _number(value: Any) -> float | None:
    """A finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_validation(path: Path) -> ValidationSummary:
    """One summary.json as nnU-Net's evaluate_predictions writes it; never raises."""
    try:
        mtime = path.stat().st_mtime
        doc = json.loads(read_bytes(path, SUMMARY_LIMIT, "summary.json"))
    except FileNotFoundError:
        return ValidationSummary("missing")
    except (OSError, ValueError) as exc:  # a directory, a FIFO, torn or not JSON (UnicodeDecodeError is one)
        return ValidationSummary("unreadable", problem=f"{path}: {exc}")
    fg = doc.get("foreground_mean") if isinstance(doc, dict) else None
    got = fg.get("Dice") if isinstance(fg, dict) else fg
    dice = _number(got)
    nan = isinstance(got, float) and math.isnan(got)
    if dice is None and not nan:
        return ValidationSummary("unreadable", problem=f"{path}: foreground_mean.Dice holds {got!r}, not a number",
                                 mtime=mtime)
    means = doc.get("mean")
    labels = {}
    for key, metrics in (means.items() if isinstance(means, dict) else ()):
        value = _number(metrics.get("Dice")) if isinstance(metrics, dict) else None
        if value is not None:
            labels[str(key)] = value
    cases = doc.get("metric_per_case")
    note = ("foreground Dice is NaN: nnU-Net writes that when a label is in none of these cases' references and "
            "never predicted; no Dice for this set") if nan else None
    return ValidationSummary("done", dice, labels, len(cases) if isinstance(cases, list) else None, mtime=mtime,
                             note=note)


def gather(layout: RunLayout, live: bool, now: float | None = None, validation: bool = True) -> dict[str, Any]:
    """The run's state; `validation`: also its final validation's Dice once nnU-Net evaluated it (summary.json)."""
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
        **({"validation": _validation(layout)} if validation else {}),
    }


def _validation(layout: RunLayout) -> dict[str, Any] | None:
    v = read_validation(layout.fold_dir / "validation" / "summary.json")
    return None if v.state == "missing" else {**v.to_json(), "path": str(layout.fold_dir / "validation")}


def validation_line(v: dict[str, Any] | None) -> str | None:
    """The fold's final validation in one line (None before it is written)."""
    if not v:
        return None
    if v.get("state") != "done":
        return f"validation summary.json unreadable: {v.get('problem')}"
    labels = ", ".join(f"{k} {d:.4f}" for k, d in (v.get("labels") or {}).items())
    cases = f" over {v['cases']} cases" if v.get("cases") is not None else ""
    if v.get("dice") is None:
        return f"validation{cases}: {v.get('note') or 'no foreground Dice'}" + (f" (per label: {labels})" if labels
                                                                               else "")
    return f"validation mean foreground Dice {v['dice']:.4f}{cases}" + (f" (per label: {labels})" if labels else "")


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
    val = validation_line(info.get("validation"))
    if val:
        lines.append(val)
    if info["last_event"]:
        ev = info["last_event"]
        lines.append(f"last event {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ev['ts']))} {ev['event']}")
    return "\n".join(lines)

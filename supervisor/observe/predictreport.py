"""`nnunet-supervise report` for a prediction: what happened to it, as numbers and as lines for a person.

Read from the prediction's run directory `<output>/supervisor/` only, never raising on what a power cut, a full disk
or a person left there (a torn events.jsonl line is skipped and said once, a damaged or missing state file reads as
empty and the events say what it would have):

- an experiment's prediction (supervisor.pipeline.predict): pipeline.json (its state, its steps and their run
  directories, the cases set aside), events.jsonl (`pipeline_started`, `step_ended` with each step's summary, the
  steps' `output_corrupt` and `case_failed` copied in, `finished` / `incomplete` / `stopped`; beside them the last
  step's own engine events, as that step's run directory is this one) and each step's own run directory (its
  state.json and events.jsonl: launches, exits, backoffs, quarantines a killed pipeline never copied);
- a run.yaml's prediction (supervisor.pipeline.single): the engine's state.json and events.jsonl there.

The parts of a prediction (`part-K-of-N/`) are reported each on its own, and their launches, quarantines and set-aside
cases count in the whole's totals. Wall time is from the first record to the last (now, while a supervisor runs it):
time between two sessions of it counts, as in the training's report. Attempts are launches of the predictor (or of
the ensembling, the postprocessing); restarts are relaunches after a failure (a `backoff` whose next attempt was
launched), over every session.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from supervisor.layout import PipelineLayout, PredictLayout, part_dirs
from supervisor.rundir.eventlog import read_events
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore

EXITS = ("finished", "incomplete", "stopped", "running")
ENGINE_EXITS = {"finished": "finished", "failed": "incomplete", "stopped": "stopped"}  # state.json's terminal states
PIPELINE_ENDS = ("finished", "incomplete", "stopped")  # the pipeline's own last events (and pipeline.json's states)
INTERRUPTED = "its supervisor ended without recording how (killed?); the same command resumes"
PARTS_ONLY = "only its parts ran so far; `predict CONFIG` (with --no-parts where they ran elsewhere) completes them"
STOPPED_CODE, USAGE_CODE, LOCKED_CODE = 75, 2, 3


class _Files:
    """Each file read once (a damaged one is said once), whatever asks for it."""

    def __init__(self) -> None:
        self._events: dict[Path, list[dict[str, Any]]] = {}
        self._states: dict[Path, dict[str, Any]] = {}

    def events(self, path: Path) -> list[dict[str, Any]]:
        if path not in self._events:
            self._events[path] = list(read_events(path))
        return self._events[path]

    def state(self, path: Path) -> dict[str, Any]:
        if path not in self._states:
            self._states[path] = StateStore(path).load()
        return self._states[path]


# ---- small readers (every value checked: the files are data, not ours to trust) ----

def _int(*values: object) -> int | None:
    """The first of values that is a count."""
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0), None)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _names(value: object) -> list[str] | None:
    return sorted({v for v in value if isinstance(v, str)}) if isinstance(value, list) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _median_gap(state: dict[str, Any]) -> float | None:
    gaps = [g for g in state.get("case_gaps") or [] if isinstance(g, (int, float)) and not isinstance(g, bool)] \
        if isinstance(state.get("case_gaps"), list) else []
    return round(statistics.median(gaps), 2) if gaps else None


def _launches(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(attempts, restarts): the launches, and those that followed a failure's backoff."""
    launched = [e.get("attempt") for e in events if e["event"] == "launch"]
    relaunch = {e.get("next_attempt") for e in events
                if e["event"] == "backoff" and _int(e.get("next_attempt")) is not None}
    return len(launched), sum(1 for a in launched if a is not None and a in relaunch)


def _quarantined(events: list[dict[str, Any]], step: str | None) -> list[dict[str, Any]]:
    return [{"path": _str(e.get("path")), "quarantined_to": _str(e.get("quarantined_to")),
             "reason": _str(e.get("reason")), "case": _str(e.get("case")), "step": _str(e.get("step")) or step,
             "ts": e["ts"]} for e in events if e["event"] == "output_corrupt"]


def _set_aside(events: list[dict[str, Any]], step: str | None) -> dict[str, dict[str, Any]]:
    """case -> {reason, step} from the `case_failed` events (the latest of a case counts)."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        case = _str(e.get("case"))
        if e["event"] == "case_failed" and case is not None:
            out[case] = {"reason": _str(e.get("reason")), "step": _str(e.get("step")) or step}
    return out


def _merge_quarantined(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per quarantined file (a step's own event and the pipeline's copy of it are one), in time order."""
    seen: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for q in sorted((q for qs in lists for q in qs), key=lambda q: q.get("ts") or 0.0):
        key = (q.get("path"), q.get("quarantined_to"))
        if key not in seen or (seen[key].get("step") is None and q.get("step") is not None):
            seen[key] = q
    return list(seen.values())


def _give_up_reason(events: list[dict[str, Any]]) -> str | None:
    last = next((e for e in reversed(events) if e["event"] == "give_up"), None)
    return None if last is None else _str(last.get("message")) or _str(last.get("reason"))


def _span(stamps: list[float], live: bool, now: float) -> float:
    if not stamps:
        return 0.0
    end = now if live else max(stamps)
    return round(max(end - min(stamps), 0.0), 1)


def _stamps(events: list[dict[str, Any]], state: dict[str, Any]) -> list[float]:
    """When things happened: the events, and the start of the latest session (before its first launch it verified
    what exists, which may take minutes)."""
    started = _number(state.get("started_ts"))
    return [float(e["ts"]) for e in events] + ([started] if started is not None else [])


def _held(lock: Path) -> bool:
    return RunLock(lock).is_held_elsewhere()


def _failed_list(names: list[str] | dict[str, Any] | None, found: dict[str, dict[str, Any]],
                 default_step: str | None) -> list[dict[str, Any]]:
    """[{case, reason, step}]: the cases the state names (a dict: with its reasons), else every case_failed event."""
    if names is None:
        return [{"case": c, **found[c]} for c in sorted(found)]
    reasons = names if isinstance(names, dict) else {}
    return [{"case": c, "reason": _str(reasons.get(c)) or found.get(c, {}).get("reason"),
             "step": found.get(c, {}).get("step") or default_step} for c in sorted(names)]


# ---- one engine run (a run.yaml's prediction, a step, a part) ----

def _engine_exit(state: dict[str, Any], events: list[dict[str, Any]],
                 live: bool) -> tuple[str | None, bool, str | None]:
    """(exit, interrupted, reason) of one engine's run directory; exit None: nothing there says anything."""
    if live:
        return "running", False, None
    phase = _str(state.get("state"))
    if phase in ENGINE_EXITS:
        exit_ = ENGINE_EXITS[phase]
        reason = _give_up_reason(events) if exit_ == "incomplete" else \
            _str(state.get("stop_reason")) if exit_ == "stopped" else None
        return exit_, False, reason
    if phase is not None:  # starting, running, backoff, stopping: nobody holds its lock any more
        return "incomplete", True, INTERRUPTED
    for e in reversed(events):  # no state.json: the events say how it ended
        kind = e["event"]
        if kind == "finished":
            return "finished", False, None
        if kind == "give_up":
            return "incomplete", False, _give_up_reason([e])
        if kind == "exit" and e.get("classification") == "stopped":
            return "stopped", False, _str(e.get("summary"))
        if kind == "stop_requested":  # stopped between attempts: no exit follows
            return "stopped", False, _str(e.get("reason"))
        if kind == "parts_ended":  # the parts ran, the whole never began
            codes = set(_dict(e.get("codes")).values())
            if STOPPED_CODE in codes:
                return "stopped", False, "a part stopped resumably"
            if codes & {USAGE_CODE, LOCKED_CODE}:
                return "incomplete", False, "a part could not run (exit 2 or 3; see its log)"
            return "incomplete", True, INTERRUPTED
        if kind in ("launch", "exit", "backoff", "parts_started"):
            return "incomplete", True, INTERRUPTED
    return None, False, None


def _run_report(output: Path, run_dir: Path, files: _Files, now: float) -> dict[str, Any] | None:
    """A run.yaml's prediction (or one part of it): one engine's state.json and events.jsonl."""
    layout = PredictLayout(output, run_dir)
    parts = [p for p in (_run_report(output, d, files, now) for d in part_dirs(run_dir)) if p is not None] \
        if not _is_part(run_dir) else []
    if not any(os.path.lexists(f) for f in (layout.state_file, layout.events_file)) and not parts:
        return None
    state, events = files.state(layout.state_file), files.events(layout.events_file)
    live = _held(layout.lock_file) or any(p["live"] for p in parts)  # the parts may run before the whole begins
    exit_, interrupted, reason = _engine_exit(state, events, live)
    if exit_ is None:  # nothing recorded says how it ended
        exit_, interrupted, reason = ("incomplete", False, PARTS_ONLY) if parts else ("incomplete", True, INTERRUPTED)
    pred = _dict(state.get("predict"))
    found = _set_aside(events, None)
    for p in parts:
        found.update({f["case"]: {"reason": f.get("reason"), "step": None} for f in p["cases_failed"]})
    failed = _failed_list(_names(pred.get("cases_failed")) if pred else None, found, None)
    for f in failed:
        f.pop("step", None)
    attempts, restarts = _launches(events)
    verified = _int(pred.get("cases_verified"))
    if verified is None and exit_ == "finished":  # no state.json: a finish counted every case but those set aside
        last: dict[str, Any] = next((e for e in reversed(events) if e["event"] == "finished" and "epochs" in e), {})
        verified = None if _int(last.get("epochs")) is None else max(0, int(last["epochs"]) - len(failed))
    step = {"name": "predict", "kind": "predict", "run_dir": str(run_dir), "state": _str(state.get("state")),
            "exit_code": _int(state.get("exit_code")), "attempts": attempts, "restarts": restarts,
            "seconds_per_case": _median_gap(state), "cases_total": _int(pred.get("cases_total")),
            "cases_verified": verified, "cases_failed": [f["case"] for f in failed],
            "reason": _give_up_reason(events)}
    quarantined = _merge_quarantined(_quarantined(events, None), *(p["quarantined"]["outputs"] for p in parts))
    for q in quarantined:
        q.pop("step", None)
    return {
        "kind": "run", "output": str(output), "run_dir": str(run_dir), "exit": exit_,
        "live": live, "interrupted": interrupted, "reason": reason, "exit_code": _int(state.get("exit_code")),
        "wall_s": _span(_stamps(events, state), live, now),
        "cases_total": step["cases_total"], "cases_verified": verified, "cases_failed": failed,
        "quarantined": {"count": len(quarantined), "outputs": quarantined},
        "attempts": attempts + sum(p["attempts"] for p in parts),
        "restarts": restarts + sum(p["restarts"] for p in parts),
        "steps": [step],
        **({"parts": [_part_entry(p) for p in parts]} if parts else {}),
    }


def _is_part(run_dir: Path) -> bool:
    return run_dir.name.startswith("part-") and "-of-" in run_dir.name


def _part_entry(p: dict[str, Any]) -> dict[str, Any]:
    name = Path(p["run_dir"]).name
    return {"part": name[5:].replace("-of-", "/"), **{k: p[k] for k in (
        "run_dir", "exit", "live", "interrupted", "reason", "wall_s", "cases_total", "cases_verified", "attempts",
        "restarts")}, "cases_failed": [f["case"] for f in p["cases_failed"]],
        "quarantined": p["quarantined"]["count"]}


# ---- an experiment's prediction (supervisor.pipeline.predict) ----

def _guess_run_dir(name: str, root: Path, part: str | None) -> Path | None:
    """A step's run directory where pipeline.json cannot say (damaged, missing): as pipeline.predict.plan lays it
    out, `predict CONF` a model folder models/*__CONF/, `ensemble`, `postprocess` the prediction's own."""
    if name == "postprocess":
        return root if part is None else None
    whole = root.parent if part is not None else root  # a part's run directory is in the whole's
    if name == "ensemble":
        found = [whole / "ensemble" / "supervisor"]
    elif name.startswith("predict "):
        try:
            found = sorted(whole.glob(f"models/*__{name[8:]}/supervisor"))
        except (OSError, ValueError):
            found = []
    else:
        found = []
    if len(found) != 1:
        return None
    return found[0] / part if part is not None else found[0]


def _session(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the pipeline's latest start."""
    return events[max((i for i, e in enumerate(events) if e["event"] == "pipeline_started"), default=0):]


def _pipeline_end(e: dict[str, Any]) -> bool:
    """One of the pipeline's own last events (the last step's engine writes `finished` beside them, with its attempt
    or `already`)."""
    return e["event"] in PIPELINE_ENDS and (e["event"] != "finished" or ("attempt" not in e and "already" not in e))


def _pipeline_exit(doc: dict[str, Any], events: list[dict[str, Any]], live: bool) -> tuple[str, bool, str | None]:
    last = next((e for e in reversed(_session(events)) if _pipeline_end(e)), None)
    reason = None
    if last is not None and last["event"] == "stopped":
        step = _str(last.get("step")) or _str(last.get("before"))
        reason = f"{_str(last.get('reason')) or 'stopped'}" + (f" (step {step})" if step else "")
    elif last is not None and last["event"] == "incomplete":
        step, failed = _str(last.get("step")), _names(last.get("cases_failed"))
        reason = f"step {step} ended with exit {last.get('code')}" if step else \
            f"{len(failed)} case(s) set aside" if failed else None
    if live:
        return "running", False, None
    state, code = _str(doc.get("state")), _int(doc.get("exit_code"))
    if state in PIPELINE_ENDS:
        if reason is None and state == "incomplete" and code not in (None, 1):
            reason = f"the pipeline ended with exit {code} (see its log)"
        return state, False, reason
    if state is None and last is not None:  # no pipeline.json: its last event says how it ended
        return last["event"], False, reason
    return "incomplete", True, INTERRUPTED  # "running" with nobody holding its lock, or events that stop short


def _pipeline_report(output: Path, run_dir: Path | None, files: _Files, now: float) -> dict[str, Any]:
    layout = PipelineLayout(output, run_dir)
    root = layout.supervisor_dir
    part = root.name if run_dir is not None else None
    doc, events = files.state(layout.state_file), files.events(layout.events_file)
    parts = [_pipeline_report(output, d, files, now) for d in part_dirs(root)] if part is None else []
    live = _held(layout.lock_file) or any(p["live"] for p in parts)  # parts may run as tasks of their own
    started = [e for e in events if e["event"] == "pipeline_started"]
    listed = [s for s in doc.get("steps") or [] if isinstance(s, dict) and isinstance(s.get("name"), str)] \
        if isinstance(doc.get("steps"), list) else []
    if not listed and started:
        listed = [{"name": n} for n in started[-1].get("steps") or [] if isinstance(n, str)] \
            if isinstance(started[-1].get("steps"), list) else []
    found = _set_aside(events, "postprocess" if part is None else None)
    all_quarantined = [_quarantined(events, "postprocess" if part is None else None)]
    steps = []
    for s in listed:
        name = s["name"]
        run = Path(s["run_dir"]) if isinstance(s.get("run_dir"), str) else _guess_run_dir(name, root, part)
        own_events = files.events(run / "events.jsonl") if run is not None else []
        own_state = files.state(run / "state.json") if run is not None else {}
        if run is not None and run != root:  # the last step's run directory is this one: read above
            found = {**_set_aside(own_events, name), **found}  # the pipeline's copies name the step too
            all_quarantined.append(_quarantined(own_events, name))
        ended = next((e for e in reversed(events) if e["event"] == "step_ended" and e.get("step") == name), None)
        summary = ended if ended is not None else s
        code = _int(ended.get("code")) if ended is not None else _int(s.get("exit_code"))
        per = _number(summary.get("seconds_per_case"))
        pred = _dict(own_state.get("predict"))
        attempts, restarts = _launches(own_events)
        if not own_events:  # the step's events unreadable: its last summary says how often it restarted
            restarts = _int(summary.get("restarts")) or 0
        step_failed = _names(summary.get("cases_failed"))
        steps.append({
            "name": name, "kind": _str(s.get("kind")) or name.split(" ")[0],
            "run_dir": None if run is None else str(run),
            "state": _str(own_state.get("state")),
            "exit_code": code, "attempts": attempts, "restarts": restarts,
            "seconds_per_case": per if per is not None else _median_gap(own_state),
            "cases_total": _int(summary.get("cases_total"), pred.get("cases_total")),
            "cases_verified": _int(summary.get("cases_verified"), pred.get("cases_verified")),
            "cases_failed": step_failed if step_failed is not None else _names(pred.get("cases_failed")) or [],
            "reason": _give_up_reason(own_events)})
    for p in parts:
        found.update({f["case"]: {"reason": f.get("reason"), "step": f.get("step")} for f in p["cases_failed"]
                      if f["case"] not in found})
        all_quarantined.append(p["quarantined"]["outputs"])
    exit_, interrupted, reason = _pipeline_exit(doc, events, live)
    if parts and not doc and not events and not live:
        interrupted, reason = False, PARTS_ONLY
    recorded = doc.get("cases_failed")
    names: list[str] | dict[str, Any] | None = None  # None: every case_failed event counts
    if isinstance(recorded, dict):  # pipeline.json: what is set aside now, and why
        names = recorded
    elif any(st["exit_code"] is not None for st in steps):  # else what the steps' last summaries name
        names = sorted({c for st in steps for c in st["cases_failed"]})
    failed = _failed_list(names, found, None)
    end: dict[str, Any] = next((e for e in reversed(_session(events))
                                if _pipeline_end(e) and _int(e.get("cases_total")) is not None), {})
    last: dict[str, Any] = steps[-1] if steps else {}
    quarantined = _merge_quarantined(*all_quarantined)
    return {
        "kind": "pipeline", "output": str(output), "run_dir": str(root), "exit": exit_, "live": live,
        "interrupted": interrupted, "reason": reason, "exit_code": _int(doc.get("exit_code")),
        "wall_s": _span(_stamps(events, doc), live, now), "sessions": len(started),
        "step": _str(doc.get("step")) if live else None,
        "cases_total": _int(end.get("cases_total"), *(st["cases_total"] for st in steps)),
        "cases_verified": last.get("cases_verified"), "cases_failed": failed,
        "quarantined": {"count": len(quarantined), "outputs": quarantined},
        "attempts": sum(st["attempts"] for st in steps) + sum(p["attempts"] for p in parts),
        "restarts": sum(st["restarts"] for st in steps) + sum(p["restarts"] for p in parts),
        "steps": steps,
        **({"parts": [_part_entry(p) for p in parts]} if parts else {}),
    }


# ---- the public face ----

def prediction_report(output: Path, *, now: float | None = None) -> dict[str, Any] | None:
    """What happened to the prediction into `output` (its run directory `output/supervisor/`); None when it never
    ran there. Never raises on what is in the folder."""
    root = PredictLayout(output).supervisor_dir
    if not root.is_dir():
        return None
    files, at = _Files(), time.time() if now is None else now
    pipeline = PipelineLayout(output)
    if any(os.path.lexists(d / pipeline.state_file.name) for d in [root, *part_dirs(root)]) or any(
            e["event"] == "pipeline_started" for e in files.events(pipeline.events_file)):
        return _pipeline_report(output, None, files, at)
    return _run_report(output, root, files, at)


def for_config(config: Path, predict_output: str | None) -> dict[str, Any] | None:
    """The report of a file's predict section (predict.output counts from the file's folder), None without one or
    before it ran."""
    if predict_output is None:
        return None
    return prediction_report((config.resolve().parent / predict_output).resolve())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cases(done: int | None, total: int | None) -> str:
    return f"{'?' if done is None else done}/{'?' if total is None else total}"


def report_lines(d: dict[str, Any]) -> list[str]:
    """The report as a person reads it."""
    what = "an experiment's prediction" if d.get("kind") == "pipeline" else "prediction"
    exit_ = d.get("exit")
    if exit_ == "running":
        state = "running" + (f" (step {d['step']})" if d.get("step") else "")
    else:
        state = str(exit_) + (f" ({d['reason']})" if d.get("reason") else "")
    failed, quarantined = d.get("cases_failed") or [], d.get("quarantined") or {}
    lines = [f"{what} into {d.get('output')}: {state}; wall {_minutes(float(d.get('wall_s') or 0))}",
             f"  {_cases(d.get('cases_verified'), d.get('cases_total'))} final outputs verified, "
             f"{len(failed)} case(s) failed, {quarantined.get('count', 0)} output(s) quarantined, "
             f"{_plural(int(d.get('attempts') or 0), 'attempt')}, {_plural(int(d.get('restarts') or 0), 'restart')}"]
    if d.get("kind") == "pipeline":
        for st in d.get("steps") or []:
            per = f", {st['seconds_per_case']:g} s per case" if st.get("seconds_per_case") is not None else ""
            code = st.get("exit_code")
            ended = "not run yet" if code is None and st.get("attempts") == 0 and st.get("state") is None else \
                f"exit {code}" if code is not None else str(st.get("state") or "not ended")
            lines.append(f"  step {st['name']}: {ended}, {_cases(st.get('cases_verified'), st.get('cases_total'))} "
                         f"verified{per}, {_plural(st.get('attempts') or 0, 'attempt')}, "
                         f"{_plural(st.get('restarts') or 0, 'restart')}"
                         + (f", failed: {', '.join(st['cases_failed'])}" if st.get("cases_failed") else ""))
    else:
        for st in d.get("steps") or []:
            if st.get("seconds_per_case") is not None:
                lines.append(f"  {st['seconds_per_case']:g} s per case")
    for f in failed:
        step = f" (step {f['step']})" if f.get("step") else ""
        lines.append(f"  failed: {f.get('case')}{step}: {f.get('reason') or 'no reason recorded'}")
    for q in quarantined.get("outputs") or []:
        step = f" (step {q['step']})" if q.get("step") else ""
        lines.append(f"  quarantined{step}: {q.get('path')} -> {q.get('quarantined_to')}"
                     + (f" ({q['reason']})" if q.get("reason") else ""))
    for p in d.get("parts") or []:
        pstate = str(p.get("exit")) + (f" ({p['reason']})" if p.get("reason") and p.get("exit") != "running" else "")
        lines.append(f"  part {p['part']}: {pstate}, {_cases(p.get('cases_verified'), p.get('cases_total'))} "
                     f"verified, {_plural(int(p.get('attempts') or 0), 'attempt')}, "
                     f"{_plural(int(p.get('restarts') or 0), 'restart')}"
                     + (f", failed: {', '.join(p['cases_failed'])}" if p.get("cases_failed") else ""))
    return lines

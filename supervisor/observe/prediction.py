"""Where an experiment's prediction (supervisor.pipeline) stands, for `status`: read from its files only."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from supervisor.layout import PipelineLayout
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore


def pipeline_status(output: Path) -> dict[str, Any] | None:
    """Where an experiment's prediction stands, for `status`: the pipeline's state.json, the running step's live
    count of cases (its own state.json) and an ETA from its pace; None when it never started."""
    layout = PipelineLayout(output)
    doc = StateStore(layout.state_file).load()
    if not doc:
        return None
    steps = [s for s in doc.get("steps") or [] if isinstance(s, dict)]
    current = next((s for s in steps if s.get("name") == doc.get("step")), None)
    live: dict[str, Any] = {}
    if current is not None and isinstance(current.get("run_dir"), str):
        live = StateStore(Path(current["run_dir"]) / "state.json").load()
    last = steps[-1] if steps else {}
    final = StateStore(layout.state_file.parent / "state.json").load().get("predict")  # the last step's
    found = live.get("predict")
    pr: dict[str, Any] = found if isinstance(found, dict) else {}
    total = pr.get("cases_total") or last.get("cases_total")
    done = final.get("cases_verified") if isinstance(final, dict) else last.get("cases_verified")
    failed = sorted(doc.get("cases_failed") or {})
    held = RunLock(layout.lock_file).is_held_elsewhere()
    out: dict[str, Any] = {
        "state": doc.get("state") if held or doc.get("state") != "running" else "running (no supervisor)",
        "live": held, "step": doc.get("step"), "steps": [s.get("name") for s in steps],
        "cases_total": total, "cases_done": done if isinstance(done, int) else 0, "cases_failed": failed,
        "step_cases_done": pr.get("cases_done"), "output": doc.get("output"), "eta_s": None}
    if held and doc.get("step") is not None and pr:  # an ETA only while it runs
        gaps = [g for g in live.get("case_gaps") or [] if isinstance(g, (int, float))]
        left = (pr.get("cases_total") or 0) - (pr.get("cases_done") or 0) - len(pr.get("cases_failed") or [])
        if gaps and left >= 0:
            out["eta_s"] = round(statistics.median(gaps) * left)  # of the running step
    return out

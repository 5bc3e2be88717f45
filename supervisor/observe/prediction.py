"""Where an experiment's prediction (supervisor.pipeline) stands, for `status`: read from its files only."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from supervisor.layout import PipelineLayout, PredictLayout, part_dirs
from supervisor.rundir.lock import RunLock
from supervisor.rundir.statefile import StateStore

PARTS_STEP = "parts"  # pipeline.json's step while the parts run (supervisor.pipeline.predict)


def run_status(layout: PredictLayout) -> dict[str, Any] | None:
    """Where one model's prediction (or a part of it) stands, from its state.json; None before it started."""
    doc = StateStore(layout.state_file).load()
    if not doc:
        return None
    found = doc.get("predict")
    pred: dict[str, Any] = found if isinstance(found, dict) else {}
    failed = pred.get("cases_failed")
    return {"state": doc.get("state"), "live": RunLock(layout.lock_file).is_held_elsewhere(),
            "attempt": doc.get("attempt"), "restarts": doc.get("restarts"),
            "cases_total": pred.get("cases_total"), "cases_done": pred.get("cases_done"),
            "cases_failed": failed if isinstance(failed, list) else [], "output": str(layout.output)}


def parts_status(whole: PredictLayout, pipeline: bool) -> list[dict[str, Any]]:
    """Each part's own standing (stages.prediction.parts), in the order of the parts."""
    out = []
    for folder in part_dirs(whole.supervisor_dir):
        if pipeline:
            got = pipeline_status(whole.output, folder)
        else:
            got = run_status(PredictLayout(whole.output, folder))
        if got is not None:
            out.append({"part": folder.name[5:].replace("-of-", "/"), **{k: got.get(k) for k in (
                "state", "live", "cases_total", "cases_done", "cases_failed")},
                "step_cases_done": got.get("step_cases_done", got.get("cases_done"))})
    return out


def summed(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts' cases together (while they run, before the whole's own count)."""
    def total(key: str) -> int:
        return sum(p[key] for p in parts if isinstance(p.get(key), int))

    return {"cases_total": total("cases_total"), "cases_done": total("step_cases_done"),
            "cases_failed": sorted({c for p in parts for c in p.get("cases_failed") or []}),
            "live": any(p.get("live") for p in parts)}


def pipeline_status(output: Path, run_dir: Path | None = None) -> dict[str, Any] | None:
    """Where an experiment's prediction (or a part of it, in run_dir) stands, for `status`: the pipeline's
    state.json, the running step's live count of cases (its own state.json) and an ETA from its pace; None when it
    never started."""
    layout = PipelineLayout(output, run_dir)
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
    if run_dir is None:
        parts = parts_status(layout, pipeline=True)
        if parts:
            out["parts"] = parts
            if doc.get("step") == PARTS_STEP:  # the parts run: their count is the step's
                out["step_cases_done"] = summed(parts)["cases_done"]
    if held and doc.get("step") is not None and pr:  # an ETA only while it runs
        gaps = [g for g in live.get("case_gaps") or [] if isinstance(g, (int, float))]
        left = (pr.get("cases_total") or 0) - (pr.get("cases_done") or 0) - len(pr.get("cases_failed") or [])
        if gaps and left >= 0:
            out["eta_s"] = round(statistics.median(gaps) * left)  # of the running step
    return out

"""An experiment's cross-validation numbers, per trainer x plans x configuration, from nnU-Net's own files:

- each finished fold's `validation/summary.json` (nnU-Net's evaluation of that fold's validation cases, written at
  the end of its final validation): the number shown is the **mean over the finished folds of each fold's
  `foreground_mean` Dice**, with each fold's own and the per-label means (over the same folds). Until every fold is
  there it is "so far (k of n folds)"; then it is final.
- once find_best ran, each model's `crossval_results_folds_<folds>/summary.json` (every fold's validation cases
  pooled and evaluated at once: nnU-Net's number, the one find_best compares) is shown beside it as `nnunet_dice`,
  and find_best's choice (a model or an ensemble, before and after postprocessing) from its
  inference_information.json. The two numbers differ (a mean of per-fold means against one mean over all cases,
  so folds of unequal size weigh differently); neither is derived from the other.

Read from the files only (a torn or wrong-typed summary is "unreadable" for its fold, never an exception), so it
works while the experiment runs, after it ended, and from any machine that sees nnUNet_results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.findbest import INFORMATION, find_best_done
from supervisor.fileread import read_bytes
from supervisor.observe.status import ValidationSummary, read_validation

HEADER = "cross-validation (mean foreground Dice over finished folds):"


@dataclass
class ModelCV:
    """One trainer x plans x configuration over the experiment's numbered folds."""

    trainer: str
    plans: str
    configuration: str
    name: str  # as the status table names it: the configuration, in a study <trainer>__<plans>/<configuration>
    folds: dict[str, ValidationSummary] = field(default_factory=dict)  # fold -> its validation summary
    label_names: dict[str, str] = field(default_factory=dict)  # nnU-Net's label key -> dataset.json's name
    nnunet: ValidationSummary | None = None  # find_best's pooled cross-validation summary, when it is there
    nnunet_current: bool = False  # ... and newer than every fold's validation
    best: bool = False

    @property
    def model(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def used(self) -> list[ValidationSummary]:
        return [s for s in self.folds.values() if s.state == "done"]

    @property
    def mean_dice(self) -> float | None:
        scored = [s.dice for s in self.used if s.dice is not None]  # a fold whose Dice is NaN has none to average
        return sum(scored) / len(scored) if scored else None

    @property
    def final(self) -> bool:
        return bool(self.folds) and len(self.used) == len(self.folds)

    def label_means(self) -> dict[str, float]:
        """Per label (or region), the mean over the folds used of each fold's mean Dice (a label some fold does not
        report is averaged over the folds that do)."""
        values: dict[str, list[float]] = {}
        for s in self.used:
            for key, dice in s.labels.items():
                values.setdefault(key, []).append(dice)
        return {key: sum(v) / len(v) for key, v in values.items()}

    def to_json(self) -> dict[str, Any]:
        used = len(self.used)
        return {
            "trainer": self.trainer, "plans": self.plans, "configuration": self.configuration, "name": self.name,
            "model": self.model, "folds_total": len(self.folds), "folds_finished": used,
            "folds_unreadable": sum(s.state == "unreadable" for s in self.folds.values()), "final": self.final,
            "mean_dice": None if self.mean_dice is None else round(self.mean_dice, 6),
            "folds": [{"fold": int(f) if f.isdigit() else f, **s.to_json()} for f, s in self.folds.items()],
            "labels": {k: {"name": self.label_names.get(k), "dice": round(d, 6)}
                       for k, d in self.label_means().items()},
            "nnunet_dice": None if self.nnunet is None or self.nnunet.dice is None else round(self.nnunet.dice, 6),
            "nnunet_current": self.nnunet_current if self.nnunet is not None else None,
            "best": self.best,
        }


def _label_names(model_dir: Path) -> dict[str, str]:
    """dataset.json's names for nnU-Net's summary keys: a label's "1", a region's "(1, 2)"."""
    try:
        doc = json.loads(read_bytes(model_dir / "dataset.json", 16 << 20, "dataset.json"))
    except (OSError, ValueError):
        return {}
    labels = doc.get("labels") if isinstance(doc, dict) else None
    out: dict[str, str] = {}
    for name, value in (labels.items() if isinstance(labels, dict) else ()):
        if isinstance(value, int) and not isinstance(value, bool):
            out[str(value)] = str(name)
        elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            out[str(tuple(value))] = str(name)  # nnU-Net's key of a region: str() of its tuple
    return out


def models(exp: ExperimentContext) -> list[ModelCV]:
    """Every trainer x plans x configuration of the experiment, in the cells' order, with what its folds wrote.
    Fold "all" is no cross-validation fold and is left out (find_best leaves it out too)."""
    numbered = [str(f) for f in exp.spec.experiment.folds if f != "all"]
    found: dict[tuple[str, str, str], ModelCV] = {}
    for cell in exp.cells:
        if str(cell.fold) not in numbered:
            continue
        trainer, plans = exp.trainer_plans(cell)
        key = (trainer, plans, cell.configuration)
        if key not in found:
            name = cell.configuration if cell.study is None else f"{cell.study}/{cell.configuration}"
            found[key] = ModelCV(trainer, plans, cell.configuration, name)
        fold_dir = exp.fold_layout(cell).fold_dir
        found[key].folds[str(cell.fold)] = read_validation(fold_dir / "validation" / "summary.json")
    for m in found.values():
        model_dir = exp.paths.results / exp.dataset_name / m.model
        m.label_names = _label_names(model_dir)
        pooled = read_validation(model_dir / f"crossval_results_folds_{'_'.join(numbered)}" / "summary.json")
        if pooled.state != "missing":
            m.nnunet = pooled
            newest = max((s.mtime or 0.0 for s in m.folds.values()), default=0.0)
            m.nnunet_current = pooled.state == "done" and m.final and (pooled.mtime or 0.0) >= newest
    return list(found.values())


def chosen(exp: ExperimentContext) -> dict[str, Any] | None:
    """find_best's choice and nnU-Net's numbers for it (inference_information.json, kept in the experiment's
    folder), or None before it ran. `current`: newer than every fold and made over this experiment's models."""
    path = exp.layout.root / INFORMATION
    try:
        doc = json.loads(read_bytes(path, 16 << 20, INFORMATION))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"path": str(path), "problem": f"unreadable: {exc}", "current": False}
    best = doc.get("best_model_or_ensemble") if isinstance(doc, dict) else None
    if not isinstance(best, dict):
        return {"path": str(path), "problem": "no best_model_or_ensemble object", "current": False}
    picked = []
    listed = best.get("selected_model_or_models")
    for m in listed if isinstance(listed, list) else []:
        if isinstance(m, dict) and all(isinstance(m.get(k), str) for k in ("trainer", "plans_identifier",
                                                                            "configuration")):
            picked.append(f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}")
    results = doc.get("all_results")
    return {"path": str(path), "models": picked, "ensemble": len(picked) > 1,
            "dice": _rounded(best.get("result_on_crossval_pre_pp")),
            "dice_postprocessed": _rounded(best.get("result_on_crossval_post_pp")),
            "all_results": {str(k): _rounded(v) for k, v in results.items()} if isinstance(results, dict) else {},
            "current": find_best_done(exp)}


def _rounded(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return round(float(value), 6)


def summary(exp: ExperimentContext) -> dict[str, Any]:
    """`status --json`'s `cross_validation`: `models` (one object per trainer x plans x configuration, see ModelCV),
    `chosen` (find_best's, or None), `best` (the model marked best) and `metric` (what `mean_dice` is)."""
    found = models(exp)
    choice = chosen(exp)
    marked: list[ModelCV] = []
    picked = choice.get("models") if choice and choice.get("current") else None
    if picked:  # find_best decided (on its pooled number): never mark another model best; an ensemble: its members
        marked = [m for m in found if m.model in picked]
    else:
        scored = [m for m in found if m.mean_dice is not None]
        top = max(scored, key=lambda m: m.mean_dice or 0.0, default=None)
        marked = [top] if top is not None else []
    for m in marked:
        m.best = True
    best = None if not marked else marked[0].model if len(marked) == 1 else \
        "ensemble of " + " + ".join(m.model for m in marked)
    return {"metric": "mean over finished folds of each fold's validation foreground_mean Dice; nnunet_dice: "
                      "find_best's, over all folds' validation cases pooled",
            "models": [m.to_json() for m in found], "chosen": choice, "best": best,
            "best_by": None if best is None else ("find_best" if picked else "mean over finished folds")}


def lines(cv: dict[str, Any] | None) -> list[str]:
    """The block `status` and `report` print; nothing before any fold finished (or was found unreadable)."""
    if not cv or not any(m["folds_finished"] or m["folds_unreadable"] for m in cv.get("models") or []):
        return []
    rows = []
    for m in cv["models"]:
        mean = "-" if m["mean_dice"] is None else f"{m['mean_dice']:.4f}"
        done = ("final" if m["final"] else f"so far ({m['folds_finished']} of {m['folds_total']} folds)")
        per_fold = " ".join("?" if f["state"] == "unreadable" else "NaN" if f["state"] == "done" and f["dice"] is None
                            else "-" if f["dice"] is None else f"{f['dice']:.4f}" for f in m["folds"])
        labels = ", ".join(f"{v['name'] or k} {v['dice']:.4f}" for k, v in m["labels"].items())
        nn = ""
        if m["nnunet_dice"] is not None:
            nn = f"nnU-Net {m['nnunet_dice']:.4f}" + ("" if m["nnunet_current"] else " (older than a fold)")
        rows.append((m["name"], mean, done, f"folds {per_fold}", nn, f"labels {labels}" if labels else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [HEADER]
    out += [("* " if m["best"] else "  ") + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            for m, r in zip(cv["models"], rows, strict=True)]
    for m in cv["models"]:
        for f in m["folds"]:
            if f["state"] == "unreadable":
                out.append(f"  {m['name']}/fold_{f['fold']}: validation summary unreadable ({f.get('problem')})")
    if cv.get("best"):
        out.append(f"  * best: {cv['best']} (by {cv['best_by']})")
    choice = cv.get("chosen")
    if choice and choice.get("problem"):
        out.append(f"  find_best's {INFORMATION}: {choice['problem']}")
    elif choice:
        what = ("ensemble of " + " + ".join(choice["models"])) if choice["ensemble"] else ", ".join(choice["models"])
        dice = "" if choice["dice"] is None else f": nnU-Net's cross-validation Dice {choice['dice']:.4f}"
        post = "" if choice["dice_postprocessed"] is None else f" ({choice['dice_postprocessed']:.4f} postprocessed)"
        stale = "" if choice["current"] else " [older than a fold or made over other models: find_best runs again]"
        out.append(f"  find_best chose {what}{dice}{post}{stale}")
    return out

"""The preprocessed dataset as the preprocessing stage sees it: how far it is (cases written per configuration), whether
it is done (every training case of every configuration present and verified), and what must be set aside before a
relaunch so that the resumable shim redoes it (a case that has its .pkl, which the shim counts as done, but is
damaged; a torn fingerprint or plans file).

nnU-Net 2.8 writes a case's arrays first and its .pkl last (DefaultPreprocessor.run_case_save), so a case without
its .pkl is one the shim will write again (it moves the old arrays into supervisor/partial/ first: blosc2 does not
write over a .b2nd).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.fileread import kind_of, read_bytes
from supervisor.preprocessed.cheap import data_identifier
from supervisor.preprocessed.verify import verify_preprocessed

JSON_LIMIT = 64 << 20
FINGERPRINT = "dataset_fingerprint.json"
REDO = "nnunet-supervise preprocess redoes only such cases"


def read_json(path: Path) -> tuple[Any, str | None]:
    """(content, None), (None, None) when the file is absent, or (None, why it cannot be used)."""
    if kind_of(path) == "missing":
        return None, None
    try:
        return json.loads(read_bytes(path, JSON_LIMIT, "JSON file")), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} is unreadable ({exc})"


def training_cases(raw_dataset: Path) -> int | None:
    """numTraining of the raw dataset.json (what nnU-Net preprocesses)."""
    doc, _ = read_json(raw_dataset / "dataset.json")
    n = doc.get("numTraining") if isinstance(doc, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def cases_written(folder: Path) -> int:
    """Cases of one configuration's folder whose .pkl (written last) exists."""
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".pkl"))
    except OSError:
        return 0


@dataclass
class Survey:
    """How far the preprocessing of one dataset is."""

    fingerprint: bool = False
    plans: dict[str, Any] | None = None
    folders: dict[str, Path] = field(default_factory=dict)  # configuration -> its data folder (once planned)
    skipped: list[str] = field(default_factory=list)  # asked for, not in the plans (nnU-Net skips them too)
    done: dict[str, int] = field(default_factory=dict)  # configuration -> cases with their .pkl
    total: int | None = None  # training cases per configuration

    @property
    def cases_done(self) -> int:
        """Progress, summed over the configurations (distinct folders once: the cascade shares 3d_fullres's)."""
        seen: dict[Path, int] = {}
        for c, n in self.done.items():
            seen[self.folders[c]] = n
        return sum(seen.values())

    @property
    def cases_total(self) -> int | None:
        if self.total is None or self.plans is None:
            return None
        return self.total * len(set(self.folders.values()))

    def document(self) -> dict[str, Any]:
        """For state.json (`status`)."""
        return {"fingerprint": self.fingerprint, "plans": self.plans is not None, "cases_done": self.cases_done,
                "cases_total": self.cases_total, "skipped": self.skipped,
                "configurations": {c: {"done": n, "total": self.total} for c, n in self.done.items()}}


def survey(dataset_dir: Path, raw_dataset: Path, plans_name: str, configurations: list[str],
           plans_cache: dict[str, Any] | None = None) -> Survey:
    """A look at the folders, cheap enough for every tick (a directory listing per configuration)."""
    s = Survey(total=training_cases(raw_dataset))
    fp, _ = read_json(dataset_dir / FINGERPRINT)
    s.fingerprint = isinstance(fp, dict)
    plans = plans_cache
    if plans is None:
        doc, _ = read_json(dataset_dir / f"{plans_name}.json")
        plans = doc if isinstance(doc, dict) and isinstance(doc.get("configurations"), dict) else None
    s.plans = plans
    if plans is None:
        return s
    for c in configurations:
        try:
            s.folders[c] = dataset_dir / data_identifier(plans, c)
        except ValueError:
            s.skipped.append(c)
            continue
        s.done[c] = cases_written(s.folders[c])
    return s


@dataclass
class Verdict:
    """Is the preprocessing done, and if not, what is wrong with what is there."""

    complete: bool
    problems: list[str] = field(default_factory=list)  # in words, one per configuration or file
    damaged: dict[str, list[str]] = field(default_factory=dict)  # configuration -> cases with a .pkl but damaged
    seconds: float = 0.0


def verify(dataset_dir: Path, raw_dataset: Path, plans_name: str, configurations: list[str],
           deep: bool = False, env: dict[str, str] | None = None) -> Verdict:
    """Every training case of every configuration present and intact (the cheap check: whole frames, readable
    pickles, agreeing shapes; `deep` decompresses each array in a subprocess), and the gt_segmentations copied."""
    t0 = time.monotonic()
    v = Verdict(complete=False)
    s = survey(dataset_dir, raw_dataset, plans_name, configurations)
    if not s.fingerprint:
        v.problems.append(f"{FINGERPRINT} is missing or unreadable")
    if s.plans is None:
        v.problems.append(f"{plans_name}.json is missing or unreadable")
        v.seconds = time.monotonic() - t0
        return v
    for c, folder in s.folders.items():
        report = verify_preprocessed(dataset_dir, s.plans, c, deep=deep, env=env)
        if report.ok:
            continue
        v.problems += report.lines(fix=REDO)
        with_pkl = [case for case in report.damaged_cases if (folder / f"{case}.pkl").is_file()]
        if with_pkl:
            v.damaged[c] = with_pkl
    gt = dataset_dir / "gt_segmentations"
    try:
        copied = sum(1 for _ in os.scandir(gt))
    except OSError:
        copied = 0
    if s.total is not None and copied < s.total:
        v.problems.append(f"gt_segmentations/ holds {copied} of {s.total} segmentations")
    v.complete = not v.problems
    v.seconds = time.monotonic() - t0
    return v


def quarantine_case(folder: Path, case: str, into: Path) -> list[str]:
    """Move every file of one case (its arrays, its .pkl) into `into` (a rename, never a delete); the names moved."""
    into.mkdir(parents=True, exist_ok=True)
    moved = []
    # the files nnU-Net 2.8 (b2nd) and older versions (npz, npy) write for a case
    names = {f"{case}{suffix}" for suffix in (".b2nd", "_seg.b2nd", ".pkl", ".npz", ".npy", "_seg.npy")}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name in names and entry.is_file(follow_symlinks=False):
            os.replace(entry.path, into / entry.name)
            moved.append(entry.name)
    return moved


def quarantine_file(path: Path, into: Path) -> Path:
    """Move one file aside into `into` under a name that does not clash."""
    into.mkdir(parents=True, exist_ok=True)
    dst, n = into / path.name, 1
    while dst.exists():
        dst, n = into / f"{path.name}.{n}", n + 1
    os.replace(path, dst)
    return dst

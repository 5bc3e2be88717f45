"""The one entry for callers: verify a configuration's preprocessed data and say, per damaged case, what is wrong and
what to run. The cheap check runs here (plain Python); the deep one reads every case with blosc2 in a
subprocess (supervisor.preprocessed.deep), so nothing here imports numpy, blosc2 or torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import SupervisorError
from supervisor.fileread import kind_of
from supervisor.oomscore import unprotect
from supervisor.preprocessed.cheap import (
    CaseProblem,
    FolderCheck,
    check_folder,
    config_value,
    data_identifier,
    load_json,
)
from supervisor.trainer.protocol import RESULT_PREFIX

# The deep subprocess prints one line as it starts a case and one as it ends it, so that a reader that dies on a
# case (blosc2 is C: a damaged chunk may crash it) names that case, and the cases before it keep their answers.
START_PREFIX = "NNUNET_SUPERVISE_CASE_START "
DONE_PREFIX = "NNUNET_SUPERVISE_CASE_DONE "
DEEP_TIMEOUT_S = 3600.0


class DeepCheckError(SupervisorError):
    """The deep-check subprocess itself failed (or ran out of time): says nothing about the data."""


@dataclass
class DeepResult:
    """What the deep read found."""

    cases_checked: int
    problems: list[CaseProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _run_deep_once(request: dict[str, Any], env: Mapping[str, str], timeout_s: float) -> tuple[
        dict[str, Any] | None, list[dict[str, Any]], str | None, int, str]:
    """One subprocess over request's cases: (final answer or None, per-case answers, case it was reading, exit
    status, last stderr line)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="nnunet-supervise-deep-") as f:
        json.dump(request, f)
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.preprocessed.deep", f.name], env=dict(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        unprotect(proc.pid)  # it holds a case's arrays: no more shielded from the OOM killer than a trainer
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            timed_out = True
    done: list[dict[str, Any]] = []
    current: str | None = None
    answer: dict[str, Any] | None = None
    for line in stdout.splitlines():
        if line.startswith(START_PREFIX):
            current = line[len(START_PREFIX):]
        elif line.startswith(DONE_PREFIX):
            done.append(json.loads(line[len(DONE_PREFIX):]))
            current = None
        elif line.startswith(RESULT_PREFIX):
            answer = json.loads(line[len(RESULT_PREFIX):])
    if timed_out:
        where = f" (reading {current}, {len(done)} of {len(request['cases'])} done)" if current else ""
        raise DeepCheckError(f"the deep check took more than {timeout_s:g} s{where}")
    tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    return answer, done, current, proc.returncode, tail


def verify_deep(folder: Path, cases: list[str], env: Mapping[str, str], expect: Mapping[str, Any] | None = None,
                timeout_s: float = DEEP_TIMEOUT_S) -> DeepResult:
    """Read every case in `folder` with blosc2 as nnU-Net's dataset does, in a subprocess, and check its content.

    expect: what the case must agree with (see deep.check_case): format, channels, labels, transpose_forward,
    target_spacing, default_preprocessor. A case that crashes the reader is a problem of that case; the
    subprocess is started again for the cases after it."""
    t0 = time.monotonic()
    result = DeepResult(cases_checked=0)
    remaining = list(cases)
    while remaining:
        left = timeout_s - (time.monotonic() - t0)
        if left <= 0:
            raise DeepCheckError(f"the deep check took more than {timeout_s:g} s "
                                 f"({result.cases_checked} of {len(cases)} done)")
        request = {"folder": str(folder), "cases": remaining, "expect": dict(expect or {})}
        answer, done, current, rc, tail = _run_deep_once(request, env, left)
        entries = answer["results"] if answer is not None else done
        for entry in entries:
            result.cases_checked += 1
            result.problems += [CaseProblem(entry["case"], p["file"], p["problem"]) for p in entry["problems"]]
            result.notes += entry.get("notes", [])
        if answer is not None:
            break
        if current is None:  # it died outside any case: at import, or on its request
            raise DeepCheckError(f"the deep-check subprocess failed (exit {rc}): {tail}")
        result.cases_checked += 1
        if rc == -9:  # SIGKILL: the OOM killer, most likely; says nothing about the files
            why = "could not be read: the reader was killed (SIGKILL: out of memory?) while reading it"
        else:  # a segfault or an abort inside blosc2's C code: what a damaged chunk does
            why = f"crashed the blosc2 reader (exit {rc}: {tail}): a file of this case is damaged inside"
        result.problems.append(CaseProblem(current, "", why))
        remaining = remaining[remaining.index(current) + 1:]
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def preprocess_command(dataset_dir: Path, plans: Mapping[str, Any], configuration: str) -> str:
    """The nnUNetv2_preprocess command line that rewrites this configuration's folder."""
    recorded = plans.get("dataset_name")  # the planner's own record; the folder may be a renamed copy
    names = [recorded if isinstance(recorded, str) else "", dataset_dir.name]
    m = next((found for found in (re.match(r"Dataset(\d+)_", n) for n in names) if found), None)
    ident = str(int(m.group(1))) if m else "<dataset id>"
    plans_name = plans.get("plans_name")
    named = f" -plans_name {plans_name}" if isinstance(plans_name, str) and plans_name != "nnUNetPlans" else ""
    return f"nnUNetv2_preprocess -d {ident}{named} -c {configuration}"


@dataclass
class PreprocessedReport:
    """Everything the check found about one configuration's preprocessed data."""

    dataset_dir: Path
    configuration: str
    folder: Path | None = None
    cases_checked: int = 0
    problems: list[CaseProblem] = field(default_factory=list)
    missing_folder: str | None = None
    folder_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deep: bool = False
    command: str = ""  # what rewrites the configuration's data
    unfinished: str | None = None  # the folder problem only preprocessing again cures (one of folder_problems)
    seconds: float = 0.0
    unchecked: str = ""  # why the folder's cases were not checked at all ("" when they were)
    deep_error: str | None = None  # why the deep read, when asked for, did not finish

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing_folder or self.folder_problems)

    @property
    def damaged_cases(self) -> list[str]:
        return sorted({p.case for p in self.problems})

    def lines(self, fix: str | None = None) -> list[str]:
        """One line per problem, each with what to run; then, once, what that command does.

        fix: the caller's own advice instead; then one line per damaged case ("preprocessed case X in FOLDER is
        damaged: ...") ending with it, and no closing line."""
        folder = self.folder or self.dataset_dir
        if fix is not None:
            by_case: dict[str, list[str]] = {}
            for p in self.problems:
                by_case.setdefault(p.case, []).append(f"{p.file} {p.problem}" if p.file else p.problem)
            out = [f"{self.missing_folder}. {fix}"] if self.missing_folder else []
            out += [f"{p}. {fix}" if p == self.unfinished else p for p in self.folder_problems]
            return out + [f"preprocessed case {case} in {folder} is damaged: {'; '.join(why)}. {fix}"
                          for case, why in sorted(by_case.items())]
        rerun = f"rerun {self.command}"
        out = [f"{self.missing_folder} — run {self.command}"] if self.missing_folder else []
        out += [f"{p} — {rerun}" if p == self.unfinished else p for p in self.folder_problems]
        out += [f"{p.line()} — {rerun}" for p in self.problems]
        if self.problems or self.unfinished:
            out.append(f"{self.command} deletes {folder.name}/ and preprocesses every case again: nnU-Net cannot "
                       "redo only the damaged cases nor resume an interrupted run, so deleting a case's files does "
                       "not help. It reads the raw dataset from nnUNet_raw and must not run while a training reads "
                       f"{folder.name}/; where only a copy of nnUNet_preprocessed is at hand, copy {folder.name}/ "
                       "again from where it was made.")
        return out


def _labels(dataset_json: Mapping[str, Any]) -> list[int] | None:
    """Every label value dataset.json names (regions: the labels they are made of), with -1, which crop_to_nonzero
    writes outside the image's nonzero mask."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping):
        return None
    values: set[int] = {-1}
    for v in labels.values():
        for x in v if isinstance(v, (list, tuple)) else [v]:
            if not isinstance(x, int) or isinstance(x, bool):
                return None
            values.add(x)
    return sorted(values)


def _channels(dataset_json: Mapping[str, Any] | None) -> int | None:
    names = (dataset_json or {}).get("channel_names", (dataset_json or {}).get("modality"))
    return len(names) if isinstance(names, Mapping) and names else None


def verify_preprocessed(preprocessed_dataset_dir: Path, plans: Mapping[str, Any], configuration: str,
                        deep: bool = False, env: Mapping[str, str] | None = None,
                        timeout_s: float = DEEP_TIMEOUT_S) -> PreprocessedReport:
    """Check each training case of `configuration` under `<nnUNet_preprocessed>/<DatasetXXX_Name>`.

    Cheap (default): files present and regular, frames whole, pickles readable, shapes agreeing; about a
    millisecond a case. deep: also decompress every array in a subprocess (env: its environment, default ours)
    and check values and the pickle's shapes; when that subprocess itself fails, deep_error says why (and a
    folder problem says the data was not read in full)."""
    t0 = time.monotonic()
    report = PreprocessedReport(dataset_dir=preprocessed_dataset_dir, configuration=configuration, deep=deep,
                                command=preprocess_command(preprocessed_dataset_dir, plans, configuration))
    try:
        folder = preprocessed_dataset_dir / data_identifier(plans, configuration)
    except ValueError as exc:
        report.folder_problems.append(f"{exc}: nnU-Net cannot tell where its preprocessed data is")
        return report
    report.folder = folder
    kind = kind_of(folder)
    if kind != "a directory":
        report.missing_folder = (f"{folder} is missing" if kind == "missing"
                                 else f"{folder} is {kind}, not a folder")
        return report
    dataset_json, problem = load_json(preprocessed_dataset_dir / "dataset.json")
    if problem:  # `check` reports the file itself; here it only means channels and labels are not compared
        report.notes.append(f"{problem}: channels, labels and numTraining not compared")
    ds = dataset_json if isinstance(dataset_json, Mapping) else None
    cheap: FolderCheck = check_folder(folder, preprocessed_dataset_dir, _channels(ds), ds)
    report.cases_checked = len(cheap.cases)
    report.problems = list(cheap.problems)
    report.folder_problems += cheap.folder_problems
    report.notes += cheap.notes
    report.unfinished = cheap.unfinished
    if deep and cheap.format is not None and cheap.intact():
        expect = {"format": cheap.format, "channels": _channels(ds), "labels": _labels(ds) if ds else None,
                  "transpose_forward": plans.get("transpose_forward"),
                  "target_spacing": config_value(plans, configuration, "spacing"),
                  "default_preprocessor": config_value(plans, configuration, "preprocessor_name")
                  == "DefaultPreprocessor"}
        try:
            found = verify_deep(folder, cheap.intact(), os.environ if env is None else env, expect, timeout_s)
        except DeepCheckError as exc:  # says nothing about the data, but what was asked for was not verified
            report.deep_error = str(exc)
            report.folder_problems.append(f"{folder.name}/ was not read in full: {exc}")
        else:
            report.problems += found.problems
            report.notes += found.notes
    report.problems.sort(key=lambda p: p.case)  # stable: within a case, the order nnU-Net writes its files
    report.seconds = round(time.monotonic() - t0, 3)
    return report

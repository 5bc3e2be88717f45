"""Verify nnU-Net 2.8's preprocessed cases cheaply, without numpy or blosc2, and name each damaged case.

nnU-Net's DefaultPreprocessor writes each case as CASE.b2nd (the image), CASE_seg.b2nd (the label), then CASE.pkl
(its properties), into <nnUNet_preprocessed>/<dataset>/<data_identifier>/. A case cut short (a kill or a power cut
mid-write) crashes a training days later at a random batch: "mmap length is greater than file size" (nnU-Net #291,
#1103, #2276). The cheap check reads each file's kind and size, each .b2nd's frame header (the length the frame says
it has must be the file's), and unpickles each .pkl with the inert unpickler (nothing in it can run). The deep check
(`deep=True`) decompresses every array in a subprocess (deep.py).

nnU-Net's `nnUNetv2_preprocess` deletes a configuration's whole folder before it writes the cases again
(DefaultPreprocessor.run: shutil.rmtree(output_directory)), so the remedy for a damaged case is to preprocess that
configuration again.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.checkpoints.meta import InertUnpickler
from supervisor.fileread import kind_of, read_bytes
from supervisor.trainer.protocol import RESULT_PREFIX

# c-blosc2's contiguous frame (README_CFRAME_FORMAT.rst): the header is a msgpack array (fixarray, 0x9X) whose first
# field is the str "b2frame\0" (0xa8 + 8 bytes), then the header length (int32, 0xd2 + 4 bytes, big-endian), then
# the frame length (uint64, 0xcf + 8 bytes, big-endian) at bytes 16..23. Checked on the files nnU-Net 2.8 writes
# (blosc2 3.x): the frame length is the file's size.
FRAME_MAGIC = b"\xa8b2frame\x00"
HEADER_BYTES = 24
MAX_PKL_BYTES = 256 << 20  # a case's properties are kilobytes (foreground locations at most megabytes)


@dataclass(frozen=True)
class CaseProblem:
    case: str
    file: str
    problem: str


@dataclass
class PreprocessedReport:
    """What the check found for one configuration's folder."""

    folder: Path
    cases_checked: int = 0
    problems: list[CaseProblem] = field(default_factory=list)
    missing_folder: bool = False
    deep: bool = False
    unchecked: str = ""  # why the folder was not checked (not nnU-Net 2.8's blosc2 format)

    @property
    def damaged_cases(self) -> list[str]:
        return sorted({p.case for p in self.problems})

    def lines(self, fix: str) -> list[str]:
        """One line per damaged case, with what would fix it."""
        by_case: dict[str, list[str]] = {}
        for p in self.problems:
            by_case.setdefault(p.case, []).append(f"{p.file}: {p.problem}")
        return [f"preprocessed case {case} in {self.folder} is damaged: {'; '.join(why)}. {fix}"
                for case, why in sorted(by_case.items())]


def frame_problem(path: Path) -> str | None:
    """None for a whole blosc2 frame; else what is wrong with it, in words."""
    kind = kind_of(path)
    if kind is not None:
        return "missing" if kind == "missing" else f"is {kind}, not a file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        head = os.read(fd, HEADER_BYTES)
    finally:
        os.close(fd)
    if len(head) < HEADER_BYTES or head[0] & 0xF0 != 0x90 or head[1:10] != FRAME_MAGIC or head[15] != 0xCF:
        return f"is not a blosc2 frame (its first bytes: {head[:12].hex()})"
    length = int.from_bytes(head[16:24], "big")
    if length > size:
        return f"is truncated ({size} of {length} bytes)"
    if length < size:
        return f"is longer than its frame ({size} bytes, the frame says {length})"
    return None


def pickle_problem(path: Path) -> str | None:
    kind = kind_of(path)
    if kind is not None:
        return "missing" if kind == "missing" else f"is {kind}, not a file"
    try:
        obj = InertUnpickler(io.BytesIO(read_bytes(path, MAX_PKL_BYTES, "case properties file"))).load()
    except OSError as exc:
        return f"cannot be read ({exc})"
    except Exception as exc:  # the inert unpickler makes odd pickles fail oddly; all mean unreadable
        return f"does not unpickle ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(obj, dict):
        return f"holds a {type(obj).__name__}, not nnU-Net's properties dict"
    return None


def expected_cases(folder: Path, splits_file: Path | None) -> list[str]:
    """The cases nnU-Net will train on: every case of splits_final.json (all folds), else those in the folder (an
    image file CASE.b2nd, as nnUNetDatasetBlosc2.get_identifiers lists them)."""
    cases: set[str] = set()
    if splits_file is not None:
        try:
            splits = json.loads(read_bytes(splits_file, 64 << 20, "splits_final.json"))
            for entry in splits if isinstance(splits, list) else []:
                for side in ("train", "val"):
                    cases.update(str(c) for c in entry.get(side, []) if isinstance(c, str))
        except (OSError, ValueError, AttributeError):
            cases = set()
    if not cases:
        try:
            cases = {n[:-5] for n in os.listdir(folder) if n.endswith(".b2nd") and not n.endswith("_seg.b2nd")}
        except OSError:
            cases = set()
    return sorted(cases)


def check_cases(folder: Path, cases: Iterable[str]) -> PreprocessedReport:
    report = PreprocessedReport(folder)
    if not folder.is_dir():
        report.missing_folder = True
        return report
    for case in cases:
        report.cases_checked += 1
        for name in (f"{case}.b2nd", f"{case}_seg.b2nd"):
            why = frame_problem(folder / name)
            if why:
                report.problems.append(CaseProblem(case, name, why))
        why = pickle_problem(folder / f"{case}.pkl")
        if why:
            report.problems.append(CaseProblem(case, f"{case}.pkl", why))
    return report


def verify_preprocessed(dataset_dir: Path, plans: Mapping[str, Any], configuration: str, deep: bool = False,
                        env: Mapping[str, str] | None = None) -> PreprocessedReport:
    """Every training case of one configuration: whole (cheap), and with `deep`, decompressed and consistent."""
    config = plans.get("configurations", {}).get(configuration, {})
    ident = config.get("data_identifier") if isinstance(config, dict) else None
    folder = dataset_dir / str(ident or f"{plans.get('plans_name', 'nnUNetPlans')}_{configuration}")
    splits = dataset_dir / "splits_final.json"
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    if names and not any(n.endswith(".b2nd") for n in names) and any(n.endswith((".npz", ".npy")) for n in names):
        # preprocessed by an older nnU-Net (numpy files): nnU-Net 2.8 still trains on them, we do not read them
        return PreprocessedReport(folder, unchecked="numpy files of an older nnU-Net, not blosc2")
    report = check_cases(folder, expected_cases(folder, splits if splits.exists() else None))
    if deep and not report.missing_folder:
        whole = [c for c in expected_cases(folder, None) if c not in report.damaged_cases]
        report.problems += deep_problems(folder, whole, env)
        report.deep = True
    return report


def deep_problems(folder: Path, cases: list[str], env: Mapping[str, str] | None = None,
                  timeout_s: float = 3600) -> list[CaseProblem]:
    """Decompress each case in a subprocess (blosc2, numpy: never in the daemon)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="nnunet-supervise-pre-") as f:
        json.dump({"folder": str(folder), "cases": cases}, f)
        f.flush()
        done = subprocess.run([sys.executable, "-m", "supervisor.preprocessed.deep", f.name], capture_output=True,
                              text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                              env=dict(os.environ if env is None else env))
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return [CaseProblem(**p) for p in json.loads(line[len(RESULT_PREFIX):])]
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return [CaseProblem("-", "-", f"the deep check could not run (exit {done.returncode}): {tail}")]

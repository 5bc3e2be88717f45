"""nnU-Net 2.8's file naming for prediction, and the cache of outputs verified already (plain Python: the daemon
imports this).

Inputs, as nnunetv2.utilities.utils.create_lists_from_splitted_dataset_folder finds them: the folder's regular files
whose names end in file_ending (case-sensitive; hidden ones too), each CASE_XXXX<file_ending> with XXXX four digits;
a case's channels sorted by name, the first the one whose geometry the prediction copies.

Outputs, as nnunetv2.inference.export_prediction.export_prediction_from_logits writes them: with save_probabilities
first CASE.npz (np.savez_compressed) and CASE.pkl (the properties, save_pickle), then, always last, CASE<file_ending>
through the plans' reader-writer (Tiff3DIO writes CASE.json, the spacing, after that). Every file is written in
place under its final name, never to a temporary renamed over it: a predictor killed mid-write leaves a torn file,
and --continue_prediction skips each case whose CASE<file_ending> exists (with save_probabilities: and CASE.npz).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.atomic import atomic_write_text
from supervisor.fileread import read_bytes

_CHANNEL = re.compile(r"_\d\d\d\d")  # nnU-Net's own pattern (create_paths_fn): re's \d
CACHE_LIMIT = 64 << 20  # some hundred bytes a case: a larger file is not our cache
CACHE_VERSION = 1


def input_cases(folder: Path, file_ending: str) -> tuple[dict[str, list[Path]], list[Path]]:
    """(case id -> its channel files, sorted; the files ignored), as nnUNetv2_predict -i FOLDER finds them (OSError
    when the folder cannot be listed).

    Ignored: files ending in file_ending that are no case's channel (no _XXXX before the ending). Worth a warning:
    nnU-Net 2.8 makes a case of each too, named by cutting len(file_ending) + 5 characters off, and where that is
    no real case it has no channel files and nnUNetv2_predict fails on it (IndexError) before predicting anything."""
    cases: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    crop = len(file_ending) + 5  # "_XXXX" and the ending, as nnU-Net crops a name to its case
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if not name.endswith(file_ending) or not path.is_file():  # os.path.isfile, as nnU-Net's subfiles
            continue
        cut = len(name) - crop
        if cut >= 0 and _CHANNEL.fullmatch(name[cut:len(name) - len(file_ending)]):
            cases.setdefault(name[:cut], []).append(path)
        else:
            ignored.append(path)
    return cases, ignored


def segmentation_file(output: Path, case: str, file_ending: str) -> Path:
    """The file nnU-Net writes last (but for Tiff3DIO's CASE.json), whose existence --continue_prediction asks."""
    return output / f"{case}{file_ending}"


def output_files(output: Path, case: str, file_ending: str, save_probabilities: bool,
                 reader: str | None = None) -> list[Path]:
    """What nnU-Net writes for case into `output`, in its order: CASE.npz and CASE.pkl (with probabilities), the
    segmentation, then Tiff3DIO's CASE.json (reader: the plans' image_reader_writer; None: only Tiff3DIO reads
    .tiff, and NaturalImage2DIO, which writes no json, is nnU-Net's first choice for .tif)."""
    files = [output / f"{case}.npz", output / f"{case}.pkl"] if save_probabilities else []
    files.append(segmentation_file(output, case, file_ending))
    if reader == "Tiff3DIO" or (reader is None and file_ending.lower() == ".tiff"):
        files.append(output / f"{case}.json")
    return files


def skipped_by_continue(output: Path, case: str, file_ending: str, save_probabilities: bool) -> bool:
    """Whether nnUNetv2_predict --continue_prediction takes the case as done (predict_from_raw_data.py's test)."""
    seg = os.path.isfile(segmentation_file(output, case, file_ending))
    return seg and (not save_probabilities or os.path.isfile(output / f"{case}.npz"))


@dataclass(frozen=True)
class OutputRequest:
    """One case to verify: its input channels and what nnU-Net wrote for it (output_files)."""

    case: str
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    probabilities: bool = False

    @classmethod
    def of(cls, entry: OutputRequest | Mapping[str, Any]) -> OutputRequest:
        """From itself or from the subprocess's form ({"case", "input", "outputs", "probabilities"})."""
        if isinstance(entry, OutputRequest):
            return entry
        return cls(str(entry["case"]), tuple(Path(p) for p in entry["input"]),
                   tuple(Path(p) for p in entry["outputs"]), bool(entry.get("probabilities", False)))


@dataclass(frozen=True)
class OutputVerdict:
    """Whether a case's outputs are whole and belong to its input; files: what to quarantine when not."""

    case: str
    ok: bool
    reason: str  # "" when ok; else in words, naming the file
    files: tuple[Path, ...]


Signature = list[list[Any]]  # [path, size, mtime_ns] per file, inputs then outputs


def signature(request: OutputRequest) -> Signature | None:
    """What identifies the files' content cheaply; None when one cannot be stat'ed (never cached then)."""
    out: Signature = []
    for path in (*request.inputs, *request.outputs):
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append([str(path), st.st_size, st.st_mtime_ns])
    return out


class VerdictCache:
    """Ok verdicts by (path, size, mtime_ns) of every file of the case, kept in a JSON file: an output verified
    once is not read again until it, or its input, changes. Only ok verdicts are kept: a bad case is quarantined,
    and a new file under its name must be read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.note: str | None = None  # why the file on disk was not used, when it was not
        self._entries: dict[str, Signature] = {}
        self._dirty = False
        self._loaded = False

    def load(self) -> VerdictCache:
        """Read the file (done on first use otherwise); a missing or damaged one leaves the cache empty (the
        outputs are simply read again)."""
        self._entries, self.note, self._loaded = {}, None, True
        try:
            data = json.loads(read_bytes(self.path, CACHE_LIMIT, "verdict cache"))
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as exc:  # a torn or foreign file: JSONDecodeError and UnicodeError are both
            self.note = f"{self.path} is unreadable ({exc}): every output is read again"
            return self
        entries = data.get("entries") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
        if not isinstance(entries, dict) or not all(_is_signature(v) for v in entries.values()):
            self.note = f"{self.path} is not a verdict cache of this version: every output is read again"
            return self
        self._entries = dict(entries)
        return self

    def adopt(self, others: Sequence[Path]) -> None:
        """Take in the ok verdicts other caches hold (the parts' of one prediction, for the whole one): an entry
        counts only while its files are still exactly those it was made of (get), so a foreign one costs nothing."""
        if not self._loaded:
            self.load()
        for path in others:
            other = VerdictCache(path).load()
            for key, sig in other._entries.items():
                if key not in self._entries:
                    self._entries[key] = sig
                    self._dirty = True

    def get(self, request: OutputRequest) -> OutputVerdict | None:
        """The ok verdict kept for these very files, if any."""
        if not self._loaded:
            self.load()
        now = signature(request)
        if now is None or not request.outputs or self._entries.get(_key(request)) != now:
            return None
        return OutputVerdict(request.case, True, "", request.outputs)

    def put(self, request: OutputRequest, verdict: OutputVerdict, before: Signature | None) -> None:
        """Keep an ok verdict, if its files are still those stat'ed (`before`) when the check began."""
        if not self._loaded:
            self.load()  # else a later load would drop this, and a save would drop the file's entries
        if verdict.ok and before is not None and request.outputs and signature(request) == before:
            self._entries[_key(request)] = before
            self._dirty = True

    def save(self) -> str | None:
        """Write the file atomically when anything was added; None, or why it could not be written (the cache only
        saves reading: a failure costs nothing else)."""
        if not self._dirty:
            return None
        text = json.dumps({"version": CACHE_VERSION, "entries": self._entries}, sort_keys=True)
        try:
            # Not fsync'ed: a power cut may bring back the previous file, whose entries only match unchanged files.
            atomic_write_text(self.path, text, durable=False)
        except OSError as exc:
            return f"the verdict cache {self.path} could not be written ({exc})"
        self._dirty = False
        return None


def _key(request: OutputRequest) -> str:
    # all of a case's outputs, and whether the probabilities were asked for: a verdict answers that question only
    return "\0".join([str(int(request.probabilities)), *map(str, request.outputs)])


def _is_signature(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in f[1:]) for f in value)


def as_requests(cases: Sequence[OutputRequest]) -> list[dict[str, Any]]:
    """The subprocess's request entries (read.py)."""
    return [{"case": r.case, "input": [str(p) for p in r.inputs], "outputs": [str(p) for p in r.outputs],
             "probabilities": r.probabilities} for r in cases]

"""`nnunet-supervise bundle CONFIG -o FILE.tar.gz`: what an issue report needs, in one file.

The config, each run directory's state.json and events.jsonl, the tail of every attempt log with the FIRST real
traceback found in it (nnU-Net's augmentation workers print theirs, then the main process prints the generic
"One or more background workers are no longer alive", which is what people post and what maintainers ask them not to:
MIC-DKFZ/nnUNet#1406), the tail of nnU-Net's own training log, the doctor's report, and a README.txt saying what is
inside and what was missing. Paths under $HOME read `~`, credentials in URLs and secret-looking keys are blanked,
every file is capped. A damaged or missing file is a line in the README, never a failure of the bundle.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import parse_config
from supervisor.context import RunContext
from supervisor.errors import SupervisorError
from supervisor.layout import PredictLayout, RunFiles, RunLayout, part_dirs

TAIL_LINES = 200
FILE_CAP = 2 << 20  # bytes of any one file in the bundle
LINE_CAP = 4000  # characters of one log line kept (tqdm bars, dumped arrays)
SCAN_CAP = 256 << 20  # bytes of one log read for its first traceback
TOP = "nnunet-supervise-bundle"

# The generic last words of a crash: nnU-Net's (batchgenerators', the export pool's) and a stop's. A traceback that
# ends in one of them is what a real error caused, not the error.
GENERIC = (
    "One or more background workers are no longer alive",
    "Some background worker is 6 feet under",
    "Background workers died",
    "Some background workers are no longer alive",
    "KeyboardInterrupt",
    "SystemExit",
    "BrokenPipeError",
)
_TRACEBACK = "Traceback (most recent call last):"
_CONTEXT = re.compile(r"^(Exception in thread .*:|Process [\w-]+:|multiprocessing\.pool\.RemoteTraceback:.*)$")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*://)[^\s/@'\"]+@")
_SECRET_LINE = re.compile(r"^(\s*-?\s*[\"']?[\w.-]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD)[\w.-]*[\"']?\s*[:=]\s*).+$",
                          re.IGNORECASE | re.MULTILINE)
_CONFIG_URL = re.compile(r"(\b[a-zA-Z][\w+.-]*://)[^\s'\"]+")


@dataclass(frozen=True)
class Source:
    """One run directory to pack: its folder in the archive, its files, its logs."""

    name: str  # folder inside the archive: "fold_0", "2d__fold_1", "prediction", "experiment", ...
    run_dir: Path  # the supervisor's folder: state.json, events.jsonl, attempt-N.log
    logs: tuple[Path, ...] | None = None  # None: run_dir's attempt-*.log
    training_logs: tuple[Path, ...] = ()  # nnU-Net's training_log_*.txt, oldest first (the newest is packed)
    files: tuple[str, ...] = ("state.json", "pipeline.json", "events.jsonl")
    required: tuple[str, ...] = ("state.json", "events.jsonl")  # the README says when these are missing


def run_source(name: str, layout: RunFiles) -> Source:
    """The Source of a stage's run directory (a fold, a preprocessing, a prediction)."""
    training = tuple(layout.training_logs()) if isinstance(layout, RunLayout) else ()
    return Source(name, layout.supervisor_dir, training_logs=training)


def prediction_sources(name: str, layout: PredictLayout) -> list[Source]:
    """A prediction's run directory and its parts' (part-K-of-N/), and an experiment prediction's models' steps."""
    out = [run_source(name, layout)]
    out += [Source(f"{name}/{p.name}", p) for p in part_dirs(layout.supervisor_dir)]
    models = layout.supervisor_dir / "models"
    try:
        steps = sorted(p for p in models.iterdir() if (p / "supervisor").is_dir())
    except OSError:
        steps = []
    out += [Source(f"{name}/models/{p.name}", p / "supervisor") for p in steps]
    ensemble = layout.supervisor_dir / "ensemble" / "supervisor"
    if ensemble.is_dir():
        out.append(Source(f"{name}/ensemble", ensemble))
    return out


def experiment_source(root: Path) -> Source:
    """An experiment's own folder: its state and events, each fold supervisor's log, find_best's and predict's."""
    try:
        logs = sorted((root / "folds").glob("*.log")) + [p for p in (root / "find_best.log", root / "predict.log")
                                                         if p.is_file()]
    except OSError:
        logs = []
    return Source("experiment", root, logs=tuple(logs))


def config_sources(config: Path, doc: Any) -> tuple[list[Source], list[str]]:
    """A run.yaml's run directories (its fold's, its predict section's) and a note for each that could not be
    resolved. An experiment file's are the CLI's to find (the experiment layer is above this one)."""
    sources: list[Source] = []
    notes: list[str] = []
    try:
        ctx = RunContext.load(config, doc=doc)
        sources.append(run_source(f"fold_{ctx.layout.fold}", ctx.layout))
    except SupervisorError as exc:
        notes.append(f"the run's directory could not be resolved: {exc}")
    try:
        out = parse_config(doc, str(config)).predict.output
    except SupervisorError:
        out = None
    if out is not None:
        sources += prediction_sources("prediction", PredictLayout((config.resolve().parent / out).resolve()))
    return sources, notes


# ---- text: home, secrets ----

def shorten_home(text: str, home: str | None) -> str:
    """Paths under $HOME as ~ (the home folder itself too); nothing when home is unknown or /."""
    if not home or home.rstrip("/") in ("", "/"):
        return text
    homes = {home.rstrip("/"), os.path.realpath(home).rstrip("/")}
    for h in sorted(homes, key=len, reverse=True):
        text = re.sub(re.escape(h) + r"(?=[/\s\"':,;)\]}>|]|$)", "~", text)
    return text


def redact(text: str, config: bool = False) -> str:
    """Blank what must not be posted: credentials in URLs, secret-looking keys; in the config, every URL (apprise
    notification URLs carry their tokens in the path)."""
    text = _URL_CREDENTIALS.sub(r"\1<redacted>@", text)
    text = _SECRET_LINE.sub(r"\1<redacted>", text)
    return _CONFIG_URL.sub(r"\1<redacted>", text) if config else text


# ---- reading, bounded ----

def _kind(path: Path) -> str | None:
    """None for a regular file; else why it cannot be read, in words."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if stat.S_ISREG(st.st_mode) else "not a regular file"


def read_head(path: Path, cap: int = FILE_CAP) -> tuple[bytes, int]:
    """The first `cap` bytes and the file's size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return f.read(cap), size


def read_tail_lines(path: Path, lines: int = TAIL_LINES, cap: int = FILE_CAP) -> tuple[list[str], int]:
    """The last `lines` lines (each cut at LINE_CAP characters) from at most the last `cap` bytes, and the size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - cap))
        data = f.read(cap)
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    rows = [r.rsplit("\r", 1)[-1] for r in text.split("\n")]  # a progress bar's carriage returns: its last state
    if size > cap and rows:
        rows = rows[1:]  # the first is probably cut
    if rows and rows[-1] == "":
        rows = rows[:-1]
    return [r if len(r) <= LINE_CAP else r[:LINE_CAP] + " [...]" for r in rows[-lines:]], size


def _lines(path: Path, cap: int = SCAN_CAP) -> Iterator[str]:
    with open(path, "rb") as f:
        read = 0
        for raw in f:
            read += len(raw)
            if read > cap:
                return
            yield raw.decode("utf-8", "replace").rstrip("\r\n")


# ---- tracebacks ----

@dataclass(frozen=True)
class Traceback:
    lines: tuple[str, ...]
    line_number: int  # of the "Traceback" line, from 1
    exception: str  # the exception line ("RuntimeError: ...")

    @property
    def generic(self) -> bool:
        return any(g in self.exception for g in GENERIC)


def tracebacks(lines: Iterable[str], max_lines: int = 400) -> Iterator[Traceback]:
    """The Python tracebacks in a log, in order: the header, the indented frames, the exception line and its
    message (up to a blank line, the next traceback or a timestamped log line; 20 lines at most). The line before
    the header is kept when it names the thread or process ("Exception in thread ...", "Process Process-3:")."""
    previous = ""
    block: list[str] | None = None
    start = 0
    exception = ""
    in_message = 0
    for number, line in enumerate(lines, 1):
        if block is not None:
            if _TRACEBACK in line:
                if exception:
                    yield Traceback(tuple(block), start, exception)
                block = None
            elif not exception:
                if line[:1] in (" ", "\t") or not line.strip():
                    if len(block) < max_lines:
                        block.append(line)
                    previous = line
                    continue
                exception, in_message = line.strip(), 1
                block.append(line)
                previous = line
                continue
            elif (not line.strip() or _TIMESTAMP.match(line) or _CONTEXT.match(line) or in_message >= 20
                  or line.startswith(("The above exception", "During handling of"))):
                yield Traceback(tuple(block), start, exception)
                block = None
            else:
                block.append(line)
                in_message += 1
                previous = line
                continue
        if block is None and _TRACEBACK in line:
            block = ([previous] if _CONTEXT.match(previous.strip()) else []) + [line]
            start, exception, in_message = number, "", 0
        previous = line
    if block is not None and exception:
        yield Traceback(tuple(block), start, exception)


def first_real_traceback(lines: Iterable[str]) -> tuple[Traceback | None, Traceback | None]:
    """(the first traceback that is not a generic last word, the first generic one): the one to read, and what
    people post instead. Stops reading at the first real one."""
    generic = None
    for tb in tracebacks(lines):
        if not tb.generic:
            return tb, generic
        if generic is None:
            generic = tb
    return None, generic


# ---- the archive ----

class _Writer:
    def __init__(self, tar: tarfile.TarFile, home: str | None) -> None:
        self.tar, self.home = tar, home
        self.contents: list[tuple[str, str]] = []  # (member, what it is)
        self.missing: list[str] = []
        self.now = time.time()

    def add(self, member: str, text: str, what: str, config: bool = False) -> None:
        data = redact(shorten_home(text, self.home), config=config).encode("utf-8")
        if len(data) > FILE_CAP:
            data = data[:FILE_CAP] + f"\n[... cut at {FILE_CAP} bytes]\n".encode()
        info = tarfile.TarInfo(f"{TOP}/{member}")
        info.size, info.mtime, info.mode = len(data), int(self.now), 0o644
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))
        self.contents.append((member, what))

    def note(self, text: str) -> None:
        self.missing.append(shorten_home(re.sub(r"\s*\n\s*", " ", text.strip()), self.home))


def _add_file(w: _Writer, path: Path, member: str, what: str, required: bool = True,
              config: bool = False) -> None:
    kind = _kind(path)
    if kind is not None:
        if required or kind != "missing":
            w.note(f"{path}: {kind}")
        return
    try:
        data, size = read_head(path)
    except OSError as exc:
        w.note(f"{path}: could not be read ({exc.strerror or exc})")
        return
    text = data.decode("utf-8", "replace")
    if size > len(data):
        what += f" (its first {len(data)} of {size} bytes)"
    if path.suffix == ".json":
        try:
            json.loads(data)
        except ValueError as exc:
            what += f"; NOT valid JSON ({exc}): included as it is"
            w.note(f"{path}: damaged, not valid JSON ({exc}); included as it is")
    w.add(member, text, what, config=config)


def _add_events(w: _Writer, path: Path, member: str) -> None:
    kind = _kind(path)
    if kind is not None:
        w.note(f"{path}: {kind}")
        return
    try:
        rows, size = read_tail_lines(path, lines=5000)
    except OSError as exc:
        w.note(f"{path}: could not be read ({exc.strerror or exc})")
        return
    bad = 0
    for row in rows:
        try:
            json.loads(row)
        except ValueError:
            bad += 1
    what = "the supervisor's events, one JSON object a line"
    if size > sum(len(r) + 1 for r in rows):
        what += f" (its last {len(rows)} lines of {size} bytes)"
    if bad:
        what += f"; {bad} line(s) not valid JSON (a torn write?)"
    w.add(member, "\n".join(rows) + "\n", what)


def _add_log(w: _Writer, path: Path, member: str, what: str) -> None:
    kind = _kind(path)
    if kind is not None:
        w.note(f"{path}: {kind}")
        return
    try:
        rows, size = read_tail_lines(path)
        real, generic = first_real_traceback(_lines(path))
    except OSError as exc:
        w.note(f"{path}: could not be read ({exc.strerror or exc})")
        return
    w.add(f"{member}.tail", "\n".join(rows) + "\n", f"{what}: its last {len(rows)} lines ({size} bytes in all)")
    if real is not None:
        head = (f"# The first traceback in {path.name} that is not a generic last word (line {real.line_number}).\n"
                + (f"# The generic one people post instead (line {generic.line_number}): {generic.exception}\n"
                   if generic is not None else "") + "\n")
        w.add(f"{member}.traceback.txt", head + "\n".join(real.lines) + "\n",
              f"the first real traceback of {path.name}: {real.exception[:200]}")
    elif generic is not None:
        w.add(f"{member}.traceback.txt",
              f"# Only a generic traceback in {path.name} (line {generic.line_number}); the real error is not in "
              "this log: a worker killed without a word (the OS's out-of-memory killer, a signal): see the exit "
              "event's cause and evidence in events.jsonl and the doctor's report.\n\n" + "\n".join(generic.lines)
              + "\n", f"{path.name} has only a generic traceback: {generic.exception[:200]}")


def _attempt_number(p: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)", p.stem)
    return (int(m.group(1)) if m else 0, p.name)


def _add_source(w: _Writer, src: Source) -> None:
    if not src.run_dir.is_dir():
        w.note(f"{src.run_dir}: missing (no run directory: never run here?)")
        return
    for name in src.files:
        path = src.run_dir / name
        required = name in src.required
        if name == "events.jsonl":
            if _kind(path) is None or required:
                _add_events(w, path, f"{src.name}/{name}")
        else:
            _add_file(w, path, f"{src.name}/{name}", f"the supervisor's {name}", required=required)
    if src.logs is None:
        try:
            logs = sorted(src.run_dir.glob("attempt-*.log"), key=_attempt_number)
        except OSError:
            logs = []
        if not logs:
            w.note(f"{src.run_dir}: no attempt-N.log (nothing was launched)")
    else:
        logs = list(src.logs)
    for log in logs:
        _add_log(w, log, f"{src.name}/{log.name}", f"{log.name}, the output of what ran")
    if src.training_logs:
        newest = src.training_logs[-1]
        _add_log(w, newest, f"{src.name}/{newest.name}", f"nnU-Net's own {newest.name} (the newest of "
                                                        f"{len(src.training_logs)})")


def write_bundle(output: Path, config: Path | None, sources: list[Source], doctor_report: dict[str, Any] | None,
                 doctor_text: str | None, home: str | None = None, notes: Iterable[str] = ()) -> list[str]:
    """Write the bundle; returns the README's lines. `home` (default $HOME) is what `~` stands for. Raises OSError
    only when the output cannot be written."""
    home = os.environ.get("HOME") if home is None else home
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            w = _Writer(tar, home)
            for n in notes:
                w.note(n)
            if config is not None:
                _add_file(w, config, f"config/{config.name}", "the config file (URLs and secret-looking keys "
                                                              "blanked)", config=True)
            if doctor_report is not None:
                w.add("doctor.json", json.dumps(doctor_report, indent=2, default=str) + "\n",
                      "nnunet-supervise doctor --json: versions, driver, /dev/shm, allocation, disks, known problems")
            if doctor_text is not None:
                w.add("doctor.txt", doctor_text + "\n", "nnunet-supervise doctor, as text")
            for src in sources:
                try:
                    _add_source(w, src)
                except OSError as exc:  # a folder that vanished or turned unreadable while being packed
                    w.note(f"{src.run_dir}: could not be read ({exc.strerror or exc})")
            readme = _readme(w)
            w.add("README.txt", "\n".join(readme) + "\n", "this file")
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return readme


def _readme(w: _Writer) -> list[str]:
    lines = [f"nnunet-supervise bundle, made {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(w.now))}.",
             "Attach it to an issue. Paths under your home folder read ~; URLs and secret-looking keys in the config "
             "are blanked. Each file is capped at "
             f"{FILE_CAP >> 20} MiB and each log is its last {TAIL_LINES} lines; *.traceback.txt is the first real "
             "traceback of a log (the generic 'background workers are no longer alive' is what a worker's error "
             "causes, not the error).", "", "Contents:"]
    width = max([len(m) for m, _ in w.contents] + [len("README.txt")])
    lines += [f"  {m:<{width}}  {what}" for m, what in w.contents]
    lines.append(f"  {'README.txt':<{width}}  this file")
    if w.missing:
        lines += ["", "Missing or damaged:"] + [f"  {m}" for m in w.missing]
    return lines

"""Verify checkpoints at three levels: structure (here, no torch), content and compatibility (a subprocess).

The subprocess costs seconds (torch, nnU-Net, a network build), so its answers are cached under what decides
them: the file's bytes (size and the CRCs the structural check just confirmed), the network's fingerprint and
what the run expects. A checkpoint verified ahead, when it was written, then costs only its structural check
(milliseconds) when the trainer has crashed and the relaunch waits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor.checkpoints.fingerprint import network_fingerprint
from supervisor.checkpoints.structure import verify_structure
from supervisor.checkpoints.verdict import Verdict
from supervisor.context import RunContext
from supervisor.errors import SupervisorError
from supervisor.fileread import kind_of, read_bytes
from supervisor.oomscore import unprotect
from supervisor.trainer.protocol import RESULT_PREFIX

__all__ = ["ProbeError", "Verdict", "VerdictCache", "expectations", "network_request", "probe", "structure_verdict",
           "verify_all", "verify_file"]

NICE = 19  # where SCHED_IDLE is not available


def background(pid: int) -> None:
    """Make a verification running beside the training take only CPU time the training leaves idle.

    SCHED_IDLE (Linux), not just a nice value: a niced process still gets a tenth of a core, and torch's parallel
    regions on a busy CPU wait for their slowest thread, so even that slice made a 2-core CPU training's epochs twice
    as long. Set at once after the start, while the probe is still importing (preexec_fn is unsafe beside threads).
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, NICE)
        except OSError:
            pass


class ProbeError(SupervisorError):
    """The verification subprocess itself failed: says nothing about the checkpoints."""


def expectations(ctx: RunContext) -> dict[str, Any]:
    nn = ctx.config.nnunet
    return {"trainer_name": nn.trainer, "configuration": nn.configuration, "fold": nn.fold}


def network_request(ctx: RunContext, cache: Path | None = None) -> dict[str, Any]:
    """What the probe needs to build the configured trainer's network; cache: where to keep its shapes."""
    nn = ctx.config.nnunet
    base = ctx.paths.preprocessed / ctx.dataset_name
    return {"trainer": nn.trainer, "plans_file": str(base / f"{nn.plans}.json"),
            "dataset_json": str(base / "dataset.json"), "configuration": nn.configuration, "fold": nn.fold,
            "cache": str(cache) if cache else None}


def probe(candidates: list[str], expect: Mapping[str, Any], network: Mapping[str, Any] | None,
          env: Mapping[str, str], timeout_s: float = 600, nice: bool = False) -> dict[str, Any]:
    """Run supervisor.checkpoints.probe in a subprocess and return its parsed answer (niced when asked)."""
    request = {"candidates": candidates, "expect": dict(expect), "network": dict(network) if network else None}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="nnunet-supervise-probe-") as f:
        json.dump(request, f)
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.checkpoints.probe", f.name], env=dict(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        unprotect(proc.pid)  # a probe loading a large checkpoint is no more shielded from the OOM killer than a trainer
        if nice:
            background(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise ProbeError(f"checkpoint verification took more than {timeout_s:g} s") from None
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            answer: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            return answer
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    raise ProbeError(f"checkpoint verification subprocess failed (exit {proc.returncode}): {tail}")


def structure_verdict(path: Path) -> Verdict:
    """The first level alone (no torch): what the daemon can say by itself."""
    s = verify_structure(path)
    return Verdict(str(path), epoch=s.epoch, structure_ok=s.ok, problems=list(s.problems))


class VerdictCache:
    """The probe's answers per (bytes, network, expectations); shared by the ahead verifier and the relaunch."""

    def __init__(self, limit: int = 64) -> None:
        self._lock = threading.Lock()  # the ahead thread fills it while a relaunch's preparation reads it
        self._entries: dict[str, dict[str, Any]] = {}
        self._limit = limit
        self.hits = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            self.hits += entry is not None
            return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self._limit:  # oldest first: dicts keep insertion order
                del self._entries[next(iter(self._entries))]


def _apply(v: Verdict, r: Mapping[str, Any], network: Mapping[str, Any] | None) -> None:
    v.content_ok = not r["content_problems"]
    v.problems += r["content_problems"]
    v.epoch = r["epoch"]  # None where torch could not load it or the epoch is not a sane integer
    v.compatible = r["compatible"]
    v.missing_keys, v.unexpected_keys = list(r["missing_keys"]), list(r["unexpected_keys"])
    v.shape_mismatches, v.hints = list(r["shape_mismatches"]), list(r["hints"])
    if v.compatible is False:
        v.problems.append(f"does not fit the network {network and network.get('trainer')} builds: "
                          f"{len(v.missing_keys)} missing, {len(v.unexpected_keys)} unexpected key(s), "
                          f"{len(v.shape_mismatches)} shape mismatch(es)")


def context_key(expect: Mapping[str, Any], network: Mapping[str, Any] | None, env: Mapping[str, str]) -> str | None:
    """What besides the bytes decides a verdict; None when it cannot be told (then nothing is cached)."""
    try:
        fingerprint = network_fingerprint(dict(network), env.get("nnUNet_extTrainer", "")) if network else "-"
    except (OSError, ValueError, KeyError):
        return None
    return json.dumps([fingerprint, dict(expect)], sort_keys=True, default=str)


def read_records(path: Path | None) -> dict[str, Any]:
    """The cooperative trainer's records of what it wrote (supervisor.trainer.cooperative.Records); {} when none."""
    if path is None:
        return {}
    try:
        doc = json.loads(read_bytes(path, 1 << 20, "trainer's records"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def from_record(record: Any, size: int, crcs: tuple[int, ...], context: str | None) -> dict[str, Any] | None:
    """The probe's answer, from what the trainer recorded as it wrote the file, when the file is still those very
    bytes (size and every CRC, which the structural check has just confirmed against the data) and the network and
    expectations are the launch's: the trainer saved its own network's weights, so they fit it by construction."""
    if not isinstance(record, dict) or context is None or record.get("context") != context:
        return None
    epoch = record.get("epoch")
    if record.get("size") != size or record.get("crcs") != list(crcs) or record.get("finite") is not True \
            or not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None
    return {"content_problems": [], "epoch": epoch, "compatible": True, "missing_keys": [], "unexpected_keys": [],
            "shape_mismatches": [], "hints": [], "trusted": "the trainer's record"}


def verify_all(paths: list[Path], expect: Mapping[str, Any], network: Mapping[str, Any] | None,
               env: Mapping[str, str], cache: VerdictCache | None = None, nice: bool = False,
               written: Path | None = None) -> tuple[list[Verdict], str | None]:
    """Verdicts in the order given, plus a network-build error if the compatibility check could not run. written:
    the cooperative trainer's records; a file that matches its record needs no probe."""
    reports = [verify_structure(p) for p in paths]
    verdicts = [Verdict(str(r.path), epoch=r.epoch, structure_ok=r.ok, problems=list(r.problems)) for r in reports]
    context = context_key(expect, network, env) if cache is not None or written is not None else None
    keys = {v.path: f"{r.content_key}|{context}" for v, r in zip(verdicts, reports, strict=True) if r.ok}
    records = read_records(written)
    missing: list[Verdict] = []
    for v, r in zip(verdicts, reports, strict=True):
        if not v.structure_ok:
            continue
        hit = cache.get(keys[v.path]) if cache is not None and context is not None else None
        if hit is None:
            hit = from_record(records.get(r.path.name), r.size, r.crcs, context)
            if hit is not None and cache is not None:
                cache.put(keys[v.path], hit)
        if hit is not None:
            _apply(v, hit, network)
        else:
            missing.append(v)
    if not missing:
        return verdicts, None
    answer = probe([v.path for v in missing], expect, network, env, nice=nice)
    net_error: str | None = answer.get("network_error")
    for v, r in zip(missing, answer["results"], strict=True):
        _apply(v, r, network)
        if cache is not None and context is not None and not net_error and _unchanged(Path(v.path), keys[v.path],
                                                                                        context):
            cache.put(keys[v.path], r)
    return verdicts, net_error


def _unchanged(path: Path, key: str, context: str) -> bool:
    """The file still holds the bytes that were probed (plain nnU-Net rewrites checkpoints in place)."""
    try:
        with zipfile.ZipFile(path) as zf:
            crcs = tuple(i.CRC for i in zf.infolist())
        return f"{(path.stat().st_size, crcs)}|{context}" == key
    except Exception:  # damaged since: not the bytes that were probed
        return False


def verify_file(path: Path, expect: Mapping[str, Any], network: Mapping[str, Any] | None,
                env: Mapping[str, str]) -> tuple[Verdict, bool]:
    """`verify CHECKPOINT`: the verdict on one file and whether it is usable (for `--against`, the trainer's network
    must also have been built: a run whose trainer cannot build it has no usable checkpoint either)."""
    kind = kind_of(path)
    if kind is not None:  # checked first: a FIFO would block a reader, /dev/zero would never end
        return Verdict(str(path), problems=["no such file" if kind == "missing"
                                            else f"is {kind}, not a checkpoint file"]), False
    net_error = None
    try:
        (verdict,), net_error = verify_all([path], expect, network, env)
    except ProbeError as exc:
        verdict = structure_verdict(path)
        verdict.problems.append(f"content check could not run: {exc}")
        verdict.content_ok = False
    if net_error:
        verdict.problems.append(f"compatibility not checked: the trainer's network could not be built: {net_error}")
    return verdict, verdict.ok and not net_error

"""The one entry for callers: are the outputs an nnUNetv2_predict wrote whole, and each its own input's prediction?

The reading happens in a subprocess (supervisor.predicted.read: SimpleITK, numpy, nnU-Net's reader-writers), so
nothing here imports them. A case that crashes the reader is that case's verdict, and the subprocess starts again
for the cases after it; a case verified once is not read again while its files stay as they were (VerdictCache).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from supervisor.errors import SupervisorError
from supervisor.oomscore import unprotect
from supervisor.predicted.cases import OutputRequest, OutputVerdict, Signature, VerdictCache, as_requests, signature
from supervisor.preprocessed.verify import DONE_PREFIX, START_PREFIX
from supervisor.trainer.protocol import RESULT_PREFIX

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 3600.0


class OutputCheckError(SupervisorError):
    """The reading subprocess failed or ran out of time: it says nothing of the outputs it did not read.
    verdicts: those it gave before, in request order (quarantine their bad ones; read the rest again)."""

    def __init__(self, message: str, verdicts: list[OutputVerdict]) -> None:
        super().__init__(message)
        self.verdicts = verdicts


def _run_once(request: dict[str, Any], env: Mapping[str, str], timeout_s: float) -> tuple[
        dict[str, Any] | None, list[dict[str, Any]], str | None, int, str, bool]:
    """One subprocess over request's cases: (final answer or None, per-case answers, case it was reading, exit
    status, last stderr line, whether it ran out of time)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="nnunet-supervise-outputs-") as f:
        json.dump(request, f)
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.predicted.read", f.name], env=dict(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        unprotect(proc.pid)  # it holds a whole segmentation: no more shielded from the OOM killer than a predictor
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
    tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    return answer, done, current, proc.returncode, tail, timed_out


def _crashed(case: str, rc: int, tail: str) -> str:
    if rc == -9:  # SIGKILL: the OOM killer, most likely; a new prediction is still the safe answer
        return f"{case}'s outputs could not be read: the reader was killed (SIGKILL: out of memory?) reading them"
    return f"{case}'s outputs crashed the reader (exit {rc}: {tail}): one of them is damaged inside"


def verify_outputs(requests: Sequence[OutputRequest | Mapping[str, Any]], env: Mapping[str, str],
                   timeout_s: float = READ_TIMEOUT_S, cache: VerdictCache | None = None,
                   reader: str | None = None) -> list[OutputVerdict]:
    """One verdict per request, in their order (OutputRequests, or the subprocess's {"case", "input",
    "outputs", "probabilities"}). env: the subprocess's environment; timeout_s: for all of them together
    (OutputCheckError when spent, or when the subprocess fails outside any case); cache: reused and, for new ok
    verdicts, added to and saved; reader: the plans' image_reader_writer (None: nnU-Net's first by the ending)."""
    t0 = time.monotonic()
    reqs = [OutputRequest.of(r) for r in requests]
    verdicts: dict[int, OutputVerdict] = {}
    before: dict[int, Signature | None] = {}
    for i, req in enumerate(reqs):
        hit = cache.get(req) if cache is not None else None
        if hit is not None:
            verdicts[i] = hit
        else:
            before[i] = signature(req)  # stat'ed before reading: a file changed meanwhile is not cached
    remaining = list(before)
    try:
        while remaining:
            left = timeout_s - (time.monotonic() - t0)
            if left <= 0 and len(remaining) < len(before):  # the first run always starts, if only to time out
                raise OutputCheckError(f"the output check took more than {timeout_s:g} s "
                                       f"({len(remaining)} of {len(reqs)} cases not read)", [])
            request = {"cases": as_requests([reqs[i] for i in remaining]), "reader": reader}
            answer, done, current, rc, tail, timed_out = _run_once(request, env, max(left, 1e-3))
            for i, entry in zip(remaining, answer["results"] if answer is not None else done, strict=False):
                verdicts[i] = OutputVerdict(reqs[i].case, bool(entry["ok"]), str(entry["reason"]),
                                            reqs[i].outputs)
            if answer is not None:
                break
            if timed_out:
                where = f", reading {current}" if current is not None else ""
                raise OutputCheckError(f"the output check took more than {timeout_s:g} s ({len(done)} of "
                                       f"{len(remaining)} cases read{where})", [])
            if current is None:  # it died outside any case: at import, or on its request
                raise OutputCheckError(f"the output-check subprocess failed (exit {rc}): {tail}", [])
            crashed = remaining[len(done)]  # by position: a case's name may come twice
            verdicts[crashed] = OutputVerdict(reqs[crashed].case, False, _crashed(reqs[crashed].case, rc, tail),
                                              reqs[crashed].outputs)
            remaining = remaining[len(done) + 1:]
        if len(verdicts) < len(reqs):  # an answer short of cases: a bug of the reader, not of the files
            raise OutputCheckError(f"the output-check subprocess answered for {len(verdicts)} of {len(reqs)} "
                                   "cases", [])
    except OutputCheckError as exc:
        exc.verdicts = [verdicts[i] for i in sorted(verdicts)]
        raise
    finally:
        _keep(cache, reqs, verdicts, before)
    return [verdicts[i] for i in range(len(reqs))]


def _keep(cache: VerdictCache | None, requests: Sequence[OutputRequest], verdicts: Mapping[int, OutputVerdict],
          before: Mapping[int, Signature | None]) -> None:
    """Add the new ok verdicts to the cache and save it; a cache that cannot be written only costs reading."""
    if cache is None:
        return
    for i, sig in before.items():
        if i in verdicts:
            cache.put(requests[i], verdicts[i], sig)
    problem = cache.save()
    if problem:
        log.warning("%s", problem)

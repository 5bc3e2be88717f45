"""Prediction as a stage of the engine: `nnUNetv2_predict` for the run's model over an input folder.

Its command is nnU-Net's own with `--continue_prediction` (which skips every case whose segmentation file exists);
before every launch, and when it exits, every output that exists is verified against its input in a subprocess
(it opens in full, its size, spacing, origin and direction are the input's; with --save_probabilities the .npz and
.pkl too), so a torn or wrong output is moved into the run directory's quarantine/ (event `output_corrupt`) and
predicted again instead of counting as done. Progress is the segmentations written and nnU-Net's "Predicting CASE"
lines; a stall a silence much longer than the gaps between cases so far; "done" every input case with a verified
output; host OOM or dying workers halve nnUNet_npp, then nnUNet_nps.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.command import build_env, nnunet_tool
from supervisor.config import Config
from supervisor.core.causes import Evidence
from supervisor.core.classify import classify_exit
from supervisor.core.lifecycle import Words
from supervisor.core.messages import (
    Begin,
    ChildExited,
    DiskChecked,
    Event,
    LaunchFailed,
    Prepared,
    Record,
    Spawn,
    StopRequested,
)
from supervisor.core.poison import PoisonWatch, after_attempt
from supervisor.core.remedies import Ladder, Outcome, Remedies, RemedyOptions, Setting, user_settings
from supervisor.core.rules import DiskWatch, Every
from supervisor.core.stall import AttemptPhase, StallRules
from supervisor.errors import ConfigError, LockedError
from supervisor.evidence.collect import AttemptEvidence
from supervisor.fileread import read_bytes
from supervisor.layout import RunFiles
from supervisor.predicted.cases import OutputVerdict, VerdictCache, input_cases, output_files, segmentation_file
from supervisor.predicted.verify import OutputCheckError, verify_outputs
from supervisor.rundir.eventlog import read_events
from supervisor.stages.cases import CaseWatch, carried_gaps, disk_check
from supervisor.stages.prediction.context import PredictContext
from supervisor.stages.prediction.parts import live_parts
from supervisor.stages.stage import Look, PrepareJob
from supervisor.stages.training.traininglog import read_tail
from supervisor.trainer.protocol import MARKER_VAR

if TYPE_CHECKING:
    from supervisor.daemon.process import ProcessOps

log = logging.getLogger("nnunet_supervise")

_PREDICTING_RE = re.compile(r"^Predicting (\S+):$", re.MULTILINE)  # nnU-Net 2.8's line as it starts a case
EVIDENCE_SAMPLE_S = 2.0
VERIFY_TIMEOUT_S = 3600.0

WORDS = Words(process="predictor", done_already="every input case has a verified output; nothing to do",
              progress=lambda n: f"{n} case(s) predicted",
              relaunch=lambda late: "--continue_prediction (verified outputs kept, torn ones predicted again)",
              reached="", no_progress="no new case predicted",
              finished="every input case predicted and its output verified",
              incomplete="exited 0 but not every input case has a verified output")


class PredictLadder(Ladder):
    """The remedies of a prediction: before nnU-Net's first "Predicting CASE" line (its start-up) its -npp workers
    already read and preprocess the first cases, so a failure there is the predictor's as much as one later."""

    def next(self, cause: str, remedies: Remedies, attempt: int, epoch: int, progressed: bool,
             phase: str = "prediction") -> Outcome:
        return super().next(cause, remedies, attempt, epoch, progressed, "prediction")


class PredictWatch(CaseWatch):
    """An attempt of nnUNetv2_predict: the case it says it is on ("Predicting CASE:") and the segmentations written."""

    working: AttemptPhase = "prediction"

    def __init__(self, log_path: Path, rules: StallRules, launched_at: float, gaps: list[float], written: int) -> None:
        super().__init__(log_path, rules, launched_at, gaps, written, "startup")

    @property
    def case(self) -> str | None:
        return self.said

    def latest(self, tail: str) -> str | None:
        started = _PREDICTING_RE.findall(tail)
        return started[-1] if started else None

    def phase_of(self, said: str) -> AttemptPhase:
        return "prediction"

    def what(self, said: str) -> str:
        return f"predicting {said}"


class PredictionStage:
    """One supervised nnUNetv2_predict, for the engine (supervisor.daemon.runner)."""

    name = "prediction"
    words = WORDS
    watch_type: type[PredictWatch] = PredictWatch
    ladder_type: type[Ladder] = PredictLadder

    def __init__(self, pctx: PredictContext, ops: ProcessOps, environ: Mapping[str, str] | None = None) -> None:
        self.pctx, self.ops = pctx, ops
        self.config: Config = pctx.config
        self.config_path: Path = pctx.config_path
        self.layout = pctx.layout
        self.files: RunFiles = pctx.layout
        self.sized: dict[str, str] = {}
        env = os.environ if environ is None else environ
        self.ladder: Ladder | None = None
        if self.config.remedies.enabled:
            values, sources = user_settings(self.config.nnunet.env, env)
            r = self.config.remedies
            self.ladder = self.ladder_type(RemedyOptions(workers=r.workers, override_user=r.override_user),
                                           self.setting(values, sources, env))
        hb = self.config.heartbeat
        self.rules = StallRules(startup_grace_s=hb.startup_grace_s, floor_s=self.config.predict.stall_floor_s,
                                stall_timeout_s=None if hb.stall_timeout_s == "auto" else float(hb.stall_timeout_s))
        every, self.ignored = input_cases(pctx.input, pctx.file_ending)
        if not every:
            raise ConfigError([f"predict.input: no case in {pctx.input} (nnU-Net's layout: CASE_0000"
                               f"{pctx.file_ending}, CASE_0001{pctx.file_ending} ... per channel)"],
                              str(pctx.config_path))
        self.cases = pctx.part.take(every) if pctx.part is not None else every
        self.cache = VerdictCache(self.layout.supervisor_dir / "verified-outputs.json")
        if pctx.part is None:  # what the parts verified is not read again (an entry counts only for unchanged files)
            self.cache.adopt(sorted(self.layout.supervisor_dir.glob("part-*-of-*/verified-outputs.json")))
        self.watch: PredictWatch | None = None
        self.evidence: AttemptEvidence | None = None
        self.evidence_every = Every(EVIDENCE_SAMPLE_S)
        self.disk_watch = DiskWatch()
        self.verified: dict[str, OutputVerdict] = {}
        self.failed: dict[str, str] = {}  # case -> why: set aside after failing the predictor on its own
        self.poison = PoisonWatch()  # which case fails the predictor, found by trying it alone (core.poison)
        self._pending: list[Record] = []  # records for the next launch's preparation to write
        self._verified_at_launch = 0
        self._settled: tuple[list[OutputVerdict], list[str]] | None = None  # settle()'s verification
        self._attempt = 0
        self._gaps: list[float] = []
        self._segs = {case: segmentation_file(pctx.output, case, pctx.file_ending) for case in self.cases}
        self.reader = _reader(pctx.model_dir / "plans.json")  # the plans' image reader-writer, for other formats

    def setting(self, values: dict[str, str], sources: dict[str, str], environ: Mapping[str, str]) -> Setting:
        """What the ladder starts from: the user's own values, and the defaults where they set none."""
        return Setting(default_workers=1, user_env=values, user_source=sources)

    @property
    def work_dir(self) -> Path:
        return self.pctx.output

    @property
    def attempt(self) -> int:
        return self._attempt

    # ---- the outputs ----

    def written(self) -> int:
        """Segmentations of input cases that exist (nnU-Net writes the segmentation after the probabilities)."""
        try:
            names = {e.name for e in os.scandir(self.pctx.output)}
        except OSError:
            return 0
        return sum(1 for seg in self._segs.values() if seg.name in names)

    def _verify(self) -> tuple[list[OutputVerdict], list[str]]:
        """Every existing output checked against its input: (verdicts of the bad ones, cases still missing)."""
        p = self.pctx
        requests, missing = [], []
        for case, channels in self.cases.items():
            outputs = output_files(p.output, case, p.file_ending, self.config.predict.save_probabilities, self.reader)
            if not self._segs[case].exists():
                missing.append(case)
                continue
            requests.append({"case": case, "input": [str(c) for c in channels], "outputs": [str(o) for o in outputs],
                             "probabilities": self.config.predict.save_probabilities})
        verdicts = verify_outputs(requests, self._env(0), VERIFY_TIMEOUT_S, self.cache, self.reader) \
            if requests else []
        self.verified = {v.case: v for v in verdicts if v.ok}
        return [v for v in verdicts if not v.ok], missing

    def _stage_input(self) -> Path:
        """A folder of links to the input cases to predict (supervisor/input/): the user's folder is never touched,
        and what nnU-Net would choke on (a file not in its naming) or what was set aside is left out."""
        alone = self.poison.isolated
        todo = [case for case in self.cases if (case == alone if alone is not None else case not in self.failed)]
        staged = self.layout.supervisor_dir / "input"
        for folder, wanted in self._links(todo).items():
            folder.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(folder):
                if entry.name not in wanted and entry.is_symlink():
                    os.unlink(entry.path)  # a link of ours to a case no longer predicted (the input file stays)
            for name, target in wanted.items():
                link = folder / name
                if link.is_symlink() and os.readlink(link) == str(target):
                    continue
                if link.is_symlink():
                    os.unlink(link)
                os.symlink(target, link)
        return staged

    def _links(self, todo: list[str]) -> dict[Path, dict[str, Path]]:
        """The staged folders and their links (name -> target) for the cases to do: the input images' channels."""
        return {self.layout.supervisor_dir / "input": {channel.name: channel for case in todo
                                                        for channel in self.cases[case]}}

    def _quarantine(self, bad: list[OutputVerdict], attempt: int) -> list[Record]:
        into = self.layout.quarantine_dir / f"attempt-{attempt}"
        records = []
        for v in bad:
            for name in v.files:
                path = Path(name)
                if not path.exists():
                    continue
                into.mkdir(parents=True, exist_ok=True)
                dst, n = into / path.name, 1
                while dst.exists():
                    dst, n = into / f"{path.name}.{n}", n + 1
                os.replace(path, dst)  # a rename: the torn file is kept for a person to look at
                log.warning("output %s of case %s is not usable (%s); moved to %s, it is predicted again", path,
                            v.case, v.reason, dst)
                records.append(Record("output_corrupt", {"path": str(path), "reason": v.reason,
                                                         "quarantined_to": str(dst), "case": v.case}))
        return records

    # ---- the run ----

    def remember(self, previous: dict[str, Any]) -> None:
        self._gaps = carried_gaps(previous)
        # never two predictors on one case: the whole prediction and a part of it exclude each other
        busy = live_parts(self.layout.supervisor_dir, self.pctx.part, self.layout.lock_file.name)
        if busy:
            raise LockedError(f"{', '.join(map(str, busy))} of this prediction is run by another live supervisor; "
                              "let it finish (or stop it) first")

    def begin(self) -> Begin:
        self.pctx.output.mkdir(parents=True, exist_ok=True)
        if self.ignored:
            log.warning("predict.input: %d file(s) not in nnU-Net's layout are not predicted, e.g. %s",
                        len(self.ignored), self.ignored[0])
        log.info("predicting %d case(s) of %s with %s, fold(s) %s, %s", len(self.cases), self.pctx.input,
                 self.pctx.model_dir.name, " ".join(map(str, self.pctx.folds)), self.config.predict.checkpoint)
        try:
            bad, missing = self._verify()
        except OutputCheckError as exc:  # said again, and decided on, by the launch's preparation
            log.warning("the outputs could not be verified yet: %s", exc)
            return Begin(finished=False, resume=False, best_epoch=0)
        self._set_aside_before(missing)
        left = [c for c in missing if c not in self.failed]  # failed: set aside by the step before, or earlier
        return Begin(finished=not bad and not left, resume=False, best_epoch=len(self.verified))

    def _set_aside_before(self, missing: list[str]) -> None:
        """Cases an earlier run of this prediction (or one of its parts) proved to fail the predictor on their own:
        kept aside while their input files are those it failed on (a case whose input was replaced is tried
        again), unless the user asked to try them again (--retry-failed)."""
        folders = [self.layout.supervisor_dir]
        if self.pctx.part is None:
            folders += sorted(self.layout.supervisor_dir.glob("part-*-of-*"))
        earlier: dict[str, str] = {}
        for folder in folders:
            for e in read_events(folder / "events.jsonl", warn=False):
                case = e.get("case")
                if e.get("event") == "case_failed" and case in missing and case not in self.failed \
                        and e.get("inputs") == input_stamp(self.cases[case]):
                    earlier[case] = str(e.get("reason") or "failed the predictor on its own")
        if not earlier:
            return
        if self.pctx.retry_failed:
            log.info("trying again %d case(s) set aside before (--retry-failed): %s", len(earlier),
                     ", ".join(sorted(earlier)))
            return
        self.failed.update(earlier)
        log.warning("%d case(s) set aside before are left out again, their input unchanged: %s (replace the input, "
                    "or run with --retry-failed to try them again)", len(earlier), ", ".join(sorted(earlier)))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def news(self, item: object) -> None:
        pass

    # ---- before a launch ----

    def preparing(self) -> None:
        pass  # the verification needs the tree gone: it is the prepare job's

    def prepare(self, resume: bool, gpu_wait: Callable[[], object],
                remedies: tuple[tuple[str, str], ...]) -> PrepareJob:
        attempt = self._attempt + 1

        def run() -> tuple[Any, Event]:
            try:
                bad, _ = self._verify()
            except OutputCheckError as exc:
                # without the check --continue_prediction would count a torn output as done: a wrong result
                return [], LaunchFailed(f"the existing outputs could not be verified ({exc}); not launching, as "
                                        "--continue_prediction would keep an unverified output", "verification_failed")
            records = self._quarantine(bad, attempt)
            self._stage_input()
            gpu_wait()
            return records, Prepared(resume=False)

        return run

    def applied(self, outcome: Any) -> list[Record]:
        return list(outcome) if isinstance(outcome, list) else []

    def _env(self, attempt: int) -> dict[str, str]:
        env = build_env(self.pctx.run, attempt)
        env[MARKER_VAR] = str(self.work_dir)  # this prediction's tree, not the fold's
        return env

    def command(self, spawn: Spawn) -> tuple[list[str], dict[str, str]]:
        p, nn, pr = self.pctx, self.config.nnunet, self.config.predict
        staged = self.layout.supervisor_dir / "input"  # links to the cases to predict (_stage_input)
        argv = [nnunet_tool("nnUNetv2_predict"), "-i", str(staged), "-o", str(p.output), "-d", p.run.dataset_name,
                "-tr", nn.trainer, "-p", nn.plans, "-c", nn.configuration, "-f", *map(str, p.folds),
                "-chk", pr.checkpoint, "-device", nn.device, "--continue_prediction",
                *(["--save_probabilities"] if pr.save_probabilities else []),
                *(["-prev_stage_predictions", str(p.prev_stage)] if p.prev_stage is not None else []), *pr.extra_args]
        return argv, self._env(spawn.attempt)

    # ---- while it runs ----

    def launched(self, spawn: Spawn, pid: int, now: float) -> None:
        self._attempt = spawn.attempt
        self._verified_at_launch = len(self.verified)
        self.evidence = AttemptEvidence.start(pid, self.ops.probes)
        self.watch = self.watch_type(self.layout.attempt_log(spawn.attempt), self.rules, now, self._gaps,
                                  self.written())

    def look(self, now: float) -> Look:
        look = Look()
        watch = self.watch
        if watch is None:
            return look
        if self.evidence is not None and self.evidence_every.due(now):
            self.evidence.sample()
        before = watch.written
        why = watch.poll(now, self.written())
        look.changed = watch.written != before
        if why is not None:
            look.events.append(watch.stall_event(why, self.ops, self.work_dir, self.stall_dump_path(),
                                                 case=watch.case))
        return look

    def stall_deadline(self) -> float | None:
        return self.watch.deadline() if self.watch is not None else None

    def stall_dump_path(self) -> Path:
        return self.layout.supervisor_dir / f"stall-{self._attempt}.txt"

    def main_exited(self) -> None:
        if self.watch is not None:
            self.watch.alarmed = True

    def settle(self, returncode: int) -> None:
        """Every output checked once the tree is gone (the engine stopped what was left of it), in the waiting
        thread: reading thousands of new outputs must not hold up the main loop."""
        try:
            self._settled = self._verify()
        except OutputCheckError as exc:
            log.warning("the outputs could not be verified: %s", exc)
            self.verified = {}  # nothing is known to be done until a check answers
            self._settled = ([], list(self.cases))

    def drain(self) -> list[Record]:
        out, self._pending = self._pending, []
        return out

    def exited(self, returncode: int) -> ChildExited:
        watch, self.watch = self.watch, None
        phase = watch.stall.phase if watch is not None else "startup"
        if watch is not None:
            self._gaps = watch.stall.epoch_times
        evidence = self.evidence.finish(phase, None) if self.evidence is not None else Evidence()
        self.evidence = None
        bad, missing = self._settled if self._settled is not None else ([], list(self.cases))
        self._settled = None
        tail = read_tail(self.layout.attempt_log(self._attempt))
        self._narrow(returncode, tail)
        left = [c for c in missing if c not in self.failed]
        if returncode == 0 and (bad or left) and self.poison.isolated is None:
            log.warning("the predictor exited 0 with %d output(s) not usable and %d case(s) not predicted%s",
                        len(bad), len(left), f" (e.g. {(bad[0].case if bad else left[0])})" if bad or left else "")
        # progress counts what is settled: cases with a verified output and cases set aside
        return ChildExited(returncode, tail, not bad and not left, len(self.verified) + len(self.failed), evidence,
                           phase, tuple(sorted(self.failed)))

    def _narrow(self, returncode: int, tail: str) -> None:
        """After an attempt: the poison rule (core.poison): try a suspect alone, set a proven one aside."""
        first = next((c for c in sorted(self.cases) if c not in self.verified and c not in self.failed), None)
        verdict = after_attempt(self.poison, len(self.verified) > self._verified_at_launch, returncode == 0, first)
        self.poison = verdict.watch
        if verdict.note:
            log.warning("%s", verdict.note)
        if verdict.set_aside is not None:
            why = classify_exit(returncode, tail, False).summary
            self.failed[verdict.set_aside] = why
            self._pending.append(Record("case_failed", {"case": verdict.set_aside, "reason": why,
                                                        "inputs": input_stamp(self.cases[verdict.set_aside])}))

    def stop_request(self, ev: StopRequested) -> StopRequested:
        return ev  # every output written is kept; a torn one is caught before the next launch

    def disk(self) -> tuple[list[Record], DiskChecked]:
        return disk_check(self.pctx.output, self.config.process.attempt_log_max_bytes, self.disk_watch)

    # ---- what it says ----

    def facts(self, now: float, running: bool) -> dict[str, Any]:
        watch = self.watch
        done = watch.written if watch is not None else len(self.verified)
        return {"output": str(self.pctx.output),
                "predict": {"cases_total": len(self.cases), "cases_done": done, "cases_verified": len(self.verified),
                            "cases_failed": sorted(self.failed), "case": watch.case if watch else None},
                "case_gaps": watch.stall.epoch_times if watch is not None else self._gaps[-20:],
                "attempt_status": {"phase": watch.stall.phase, "stall_timeout_s": round(watch.stall.timeout_s(), 1),
                                   "last_progress_at": round(time.time() - (now - watch.stall.last_progress))}
                if running and watch is not None else None}

    def status(self, state: str, attempt: int, facts: dict[str, Any], wall_now: float) -> tuple[str, dict[str, Any]]:
        pr = facts.get("predict") or {}
        line = f"{state}: attempt {attempt}, predicted {pr.get('cases_done')}/{pr.get('cases_total')} cases"
        return line, {"progress": line.split(": ", 1)[1]}

    def gpu_request(self) -> tuple[str, str | None, int] | None:
        nn = self.config.nnunet
        return nn.device, nn.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES")), 1


def input_stamp(channels: list[Path]) -> list[list[Any]]:
    """What identifies a case's input files cheaply: [name, size, mtime_ns] each ([name] when one is unreadable)."""
    out: list[list[Any]] = []
    for path in channels:
        try:
            st = os.stat(path)
            out.append([path.name, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([path.name])
    return out


def _reader(plans: Path) -> str | None:
    """The plans' image_reader_writer (None: nnU-Net picks one by the file ending)."""
    try:
        doc = json.loads(read_bytes(plans, 64 << 20, "plans file"))
    except (OSError, ValueError):
        return None
    name = doc.get("image_reader_writer") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else None

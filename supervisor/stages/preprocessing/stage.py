"""Preprocessing as a stage of the engine: one dataset's fingerprint, plans and preprocessed configurations.

Its command is our resumable shim (supervisor.trainer.preprocess: nnU-Net's own fingerprint extractor, planner and
preprocessor, minus the `rmtree` of the configuration's folder, so a relaunch redoes only the cases not written);
its progress the cases written (a .pkl, which nnU-Net writes last) and the shim's step lines; a stall a silence much
longer than the gaps between cases so far; "done" every training case of every configuration verified; before a
relaunch a damaged case that counts as written, or a torn fingerprint or plans file, is set aside into the run
directory's quarantine/ so that it is made again; host OOM or dying workers halve the shim's -np.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.config import Config
from supervisor.core.causes import Evidence
from supervisor.core.lifecycle import Words
from supervisor.core.messages import Begin, ChildExited, DiskChecked, Event, Prepared, Record, Spawn, StopRequested
from supervisor.core.remedies import (
    NNUNET_DEFAULT_PREPROCESS,
    PREPROCESS_VAR,
    Ladder,
    RemedyOptions,
    Setting,
    user_settings,
)
from supervisor.core.rules import DiskWatch, Every
from supervisor.core.stall import AttemptPhase, StallRules
from supervisor.evidence.allocation import read_allocation
from supervisor.evidence.collect import AttemptEvidence
from supervisor.layout import RunFiles
from supervisor.stages.cases import CaseWatch, carried_gaps, disk_check
from supervisor.stages.preprocessing import data
from supervisor.stages.preprocessing.context import PreprocessContext
from supervisor.stages.stage import Look, PrepareJob
from supervisor.stages.training.traininglog import read_tail
from supervisor.trainer.protocol import ATTEMPT_VAR, MARKER_VAR

if TYPE_CHECKING:
    from supervisor.daemon.process import ProcessOps

log = logging.getLogger("nnunet_supervise")

STEP = "nnunet-supervise preprocess: "
_STEP_RE = re.compile(r"^nnunet-supervise preprocess: (.*)$", re.MULTILINE)
EVIDENCE_SAMPLE_S = 2.0

WORDS = Words(process="preprocessing", done_already="the preprocessed data is complete and verified; nothing to do",
              progress=lambda n: f"{n} case(s) preprocessed",
              relaunch=lambda late: "the cases not yet written (those written are kept)",
              reached="", no_progress="no new case preprocessed",
              finished="every case of every configuration preprocessed and verified",
              incomplete="exited 0 but the preprocessed data is not complete and verified (the log says what is "
                         "missing)")


def phase_of(step: str | None) -> AttemptPhase:
    """The phase the shim's latest step line puts it in."""
    if step is None or step.startswith("fingerprint"):
        return "fingerprint"
    if step.startswith("plan"):
        return "planning"
    return "preprocessing"


def fitted_processes(config: Config, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """-np fitted to the CPUs this process is given (nnU-Net's 4 at most, never over a value the user set); the
    variable to set and the reason in words."""
    if config.preprocess.num_processes is not None:
        return {}, f"-np {config.preprocess.num_processes} (preprocess.num_processes)"
    if PREPROCESS_VAR in config.nnunet.env or PREPROCESS_VAR in environ:
        return {}, f"{PREPROCESS_VAR} as you set it"
    if not config.remedies.fit_allocation:
        return {}, f"-np {NNUNET_DEFAULT_PREPROCESS} (nnU-Net's; remedies.fit_allocation: false)"
    a = read_allocation(environ)
    n = max(1, min(NNUNET_DEFAULT_PREPROCESS, math.floor(a.cpus)))
    return {PREPROCESS_VAR: str(n)}, f"-np {n} ({a.cpu_source})"


class PreprocessWatch(CaseWatch):
    """An attempt of the shim: its step lines (fingerprint, planning, configuration ...) and the cases written."""

    working: AttemptPhase = "preprocessing"

    def __init__(self, log_path: Path, rules: StallRules, launched_at: float, gaps: list[float],
                 written: int) -> None:
        super().__init__(log_path, rules, launched_at, gaps, written, "fingerprint")

    @property
    def step(self) -> str | None:
        return self.said

    def latest(self, tail: str) -> str | None:
        # the shim's own "error: ..." line is how it ended, not a step it is in
        steps = [m for m in _STEP_RE.findall(tail) if not m.startswith("error:")]
        return steps[-1].strip() if steps else None

    def phase_of(self, said: str) -> AttemptPhase:
        return phase_of(said)


class PreprocessingStage:
    """One dataset's planning and preprocessing, for the engine (supervisor.daemon.runner)."""

    name = "preprocessing"
    words = WORDS

    def __init__(self, pctx: PreprocessContext, ops: ProcessOps, deep: bool = False,
                 environ: Mapping[str, str] | None = None) -> None:
        self.pctx, self.ops, self.deep = pctx, ops, deep
        self.config: Config = pctx.config
        self.config_path: Path = pctx.config_path
        self.layout = pctx.layout
        self.files: RunFiles = pctx.layout
        env = os.environ if environ is None else environ
        self.sized, self.sizing = fitted_processes(self.config, env)
        self.ladder: Ladder | None = self._ladder(env)
        hb, pp = self.config.heartbeat, self.config.preprocess
        self.rules = StallRules(startup_grace_s=pp.step_grace_s, floor_s=pp.stall_floor_s,
                                stall_timeout_s=None if hb.stall_timeout_s == "auto" else float(hb.stall_timeout_s))
        self.watch: PreprocessWatch | None = None
        self.evidence: AttemptEvidence | None = None
        self.evidence_every = Every(EVIDENCE_SAMPLE_S)
        self.disk_watch = DiskWatch()
        self.survey = data.Survey()
        self._attempt = 0
        self._gaps: list[float] = []
        self._plans: dict[str, Any] | None = None  # read once the planning is done (it does not change after)
        self._final: data.Verdict | None = None  # what settle() found once the attempt's tree was gone

    def _ladder(self, environ: Mapping[str, str]) -> Ladder | None:
        r = self.config.remedies
        if not r.enabled:
            return None
        values, sources = user_settings(self.config.nnunet.env, environ)
        default = self.config.preprocess.num_processes or int(self.sized.get(PREPROCESS_VAR, NNUNET_DEFAULT_PREPROCESS))
        if self.config.preprocess.num_processes is not None:  # the user's -np: a remedy respects it as a setting
            values = {**values, PREPROCESS_VAR: str(default)}
            sources = {**sources, PREPROCESS_VAR: "preprocess.num_processes"}
        options = RemedyOptions(enabled=True, workers=r.workers, override_user=r.override_user)
        return Ladder(options, Setting(default_workers=1, user_env=values, user_source=sources,
                                       default_preprocess=default))

    @property
    def work_dir(self) -> Path:
        return self.layout.dataset_dir

    @property
    def attempt(self) -> int:
        return self._attempt

    # ---- the run ----

    def remember(self, previous: dict[str, Any]) -> None:
        self._gaps = carried_gaps(previous)

    def _look_at_data(self) -> data.Survey:
        p = self.pctx
        self.survey = data.survey(self.layout.dataset_dir, p.raw_dataset, p.config.nnunet.plans, p.configurations,
                                  self._plans)
        if self._plans is None and self.survey.plans is not None:
            self._plans = self.survey.plans  # readable plans are kept by the shim: read them once (a torn file resets)
        return self.survey

    def begin(self) -> Begin:
        self.work_dir.mkdir(parents=True, exist_ok=True)  # the folder the tree is marked with and watched
        log.info("preprocessing %s for %s with %s", self.pctx.dataset_name, ", ".join(self.pctx.configurations),
                 self.sizing)
        verdict = self._verify()
        return Begin(finished=verdict.complete, resume=False, best_epoch=self._look_at_data().cases_done)

    def _verify(self) -> data.Verdict:
        p = self.pctx
        return data.verify(self.layout.dataset_dir, p.raw_dataset, p.config.nnunet.plans, p.configurations,
                           deep=self.deep, env=self._env(0) if self.deep else None)

    def start(self) -> None:
        pass  # nothing runs beside the attempt

    def stop(self) -> None:
        pass

    def news(self, item: object) -> None:
        pass

    # ---- before a launch ----

    def preparing(self) -> None:
        pass  # the verification is the prepare job's, after the attempt's tree is gone

    def prepare(self, resume: bool, gpu_wait: Callable[[], object],
                remedies: tuple[tuple[str, str], ...]) -> PrepareJob:
        attempt = self._attempt + 1

        def run() -> tuple[Any, Event]:
            return self._set_aside(attempt), Prepared(resume=False)

        return run

    def _set_aside(self, attempt: int) -> list[Record]:
        """What the shim would take as done but is not: a damaged case that has its .pkl, a torn fingerprint or
        plans file. Moved into quarantine/attempt-N/ (never deleted), so that the shim makes it again."""
        p, dataset_dir = self.pctx, self.layout.dataset_dir
        into = self.layout.quarantine_dir / f"attempt-{attempt}"
        records: list[Record] = []
        for name in (data.FINGERPRINT, f"{p.config.nnunet.plans}.json"):
            path = dataset_dir / name
            _, problem = data.read_json(path)
            if problem is not None and path.is_file():
                dst = data.quarantine_file(path, into)
                log.warning("%s; moved to %s, the preprocessing makes it again", problem, dst)
                records.append(Record("file_quarantined", {"path": str(path), "reason": problem,
                                                           "quarantined_to": str(dst)}))
                self._plans = None
        verdict = data.verify(dataset_dir, p.raw_dataset, p.config.nnunet.plans, p.configurations)
        for configuration, cases in verdict.damaged.items():
            folder = self.survey.folders.get(configuration) or data.survey(
                dataset_dir, p.raw_dataset, p.config.nnunet.plans, [configuration]).folders[configuration]
            for case in cases:
                moved = data.quarantine_case(folder, case, into / folder.name)
                log.warning("preprocessed case %s of %s is damaged; moved %s to %s, the preprocessing writes it again",
                            case, configuration, ", ".join(moved), into / folder.name)
                records.append(Record("case_quarantined", {"configuration": configuration, "case": case,
                                                           "files": moved, "quarantined_to": str(into / folder.name)}))
        return records

    def applied(self, outcome: Any) -> list[Record]:
        return list(outcome) if isinstance(outcome, list) else []

    def _env(self, attempt: int) -> dict[str, str]:
        p = self.pctx
        env = dict(os.environ)
        env.update(p.config.nnunet.env)
        env.update(nnUNet_raw=str(p.raw), nnUNet_preprocessed=str(p.paths.preprocessed),
                   nnUNet_results=str(p.paths.results), PYTHONUNBUFFERED="1")
        env[ATTEMPT_VAR] = str(attempt)
        env[MARKER_VAR] = str(self.work_dir)  # every process of the tree carries it (the pool's workers too)
        return env

    def command(self, spawn: Spawn) -> tuple[list[str], dict[str, str]]:
        p, pp = self.pctx, self.config.preprocess
        argv = [sys.executable, "-m", "supervisor.trainer.preprocess", "-d", p.dataset_name, "-p",
                p.config.nnunet.plans, "-pl", pp.planner, "-c", *p.configurations,
                "-np", self.sized.get(PREPROCESS_VAR, str(pp.num_processes or NNUNET_DEFAULT_PREPROCESS))]
        if pp.verify_dataset_integrity:
            argv.append("--verify_dataset_integrity")
        return argv, self._env(spawn.attempt)

    # ---- while it runs ----

    def launched(self, spawn: Spawn, pid: int, now: float) -> None:
        self._attempt = spawn.attempt
        self.evidence = AttemptEvidence.start(pid, self.ops.probes)
        self.watch = PreprocessWatch(self.layout.attempt_log(spawn.attempt), self.rules, now, self._gaps,
                                     self._look_at_data().cases_done)

    def look(self, now: float) -> Look:
        look = Look()
        watch = self.watch
        if watch is None:
            return look
        if self.evidence is not None and self.evidence_every.due(now):
            self.evidence.sample()
        before = self.survey.cases_done
        why = watch.poll(now, self._look_at_data().cases_done)
        look.changed = self.survey.cases_done != before
        if why is not None:
            look.events.append(watch.stall_event(why, self.ops, self.work_dir, self.stall_dump_path()))
        return look

    def stall_deadline(self) -> float | None:
        return self.watch.deadline() if self.watch is not None else None

    def stall_dump_path(self) -> Path:
        return self.layout.supervisor_dir / f"stall-{self._attempt}.txt"

    def main_exited(self) -> None:
        if self.watch is not None:
            self.watch.alarmed = True  # no alarm about a process that is gone

    def settle(self, returncode: int) -> None:
        """The final verification (every case read; --deep decompressed in a subprocess), off the main loop."""
        self._final = self._verify() if returncode == 0 else data.Verdict(complete=False)

    def drain(self) -> list[Record]:
        return []

    def exited(self, returncode: int) -> ChildExited:
        watch, self.watch = self.watch, None
        phase: str = watch.stall.phase if watch is not None else "fingerprint"
        if watch is not None:
            self._gaps = watch.stall.epoch_times
        evidence = self.evidence.finish(phase, None) if self.evidence is not None else Evidence()
        self.evidence = None
        done = self._look_at_data().cases_done
        verdict = self._final if self._final is not None else data.Verdict(complete=False)
        self._final = None
        if returncode == 0 and not verdict.complete:
            for line in verdict.problems[:20]:
                log.warning("after the preprocessing exited 0: %s", line)
        tail = read_tail(self.layout.attempt_log(self._attempt))
        return ChildExited(returncode, tail, verdict.complete, done, evidence, phase)

    def stop_request(self, ev: StopRequested) -> StopRequested:
        return ev  # no save to wait for: every case written is kept

    def disk(self) -> tuple[list[Record], DiskChecked]:
        return disk_check(self.layout.dataset_dir, self.config.process.attempt_log_max_bytes, self.disk_watch)

    # ---- what it says ----

    def facts(self, now: float, running: bool) -> dict[str, Any]:
        watch = self.watch
        return {"dataset_dir": str(self.layout.dataset_dir), "preprocess": self.survey.document(),
                "step": watch.step if watch is not None else None, "case_gaps": self._gaps[-20:]
                if watch is None else watch.stall.epoch_times,
                "attempt_status": {"phase": watch.stall.phase, "stall_timeout_s": round(watch.stall.timeout_s(), 1),
                                   "last_progress_at": round(time.time() - (now - watch.stall.last_progress))}
                if running and watch is not None else None}

    def status(self, state: str, attempt: int, facts: dict[str, Any], wall_now: float) -> tuple[str, dict[str, Any]]:
        pre = facts.get("preprocess") or {}
        done, total = pre.get("cases_done"), pre.get("cases_total")
        step = facts.get("step") or ("fingerprint and plans" if not pre.get("plans") else "")
        progress = f"{done}/{total} cases" if total else f"{done} cases"
        line = f"{state}: attempt {attempt}, preprocessing {progress}" + (f" ({step})" if step else "")
        return line, {"progress": line.split(": ", 1)[1]}

    def gpu_request(self) -> tuple[str, str | None, int] | None:
        return None  # preprocessing runs on the CPUs


"""Ensembling and postprocessing as stages of the engine: `nnUNetv2_ensemble` over the models' probabilities and
`nnUNetv2_apply_postprocessing` over a folder of segmentations, as inference_instructions.txt says to run them.

Both tools work on every case of their input folders and write each output in place, with no way to skip what is
done: so the stage hands them folders of links to the cases still to do (the models' CASE.npz and CASE.pkl, or the
segmentations), verifies every output against the case's input image before each relaunch and once the tool is
gone (a torn one is quarantined and made again, as in prediction), and counts a case done only once verified.
A host OOM or dying workers halve their -np (NNUNET_SUPERVISE_COMBINE_NP).

Everything else (cases, verification, quarantine, the watch, the poison rule, the facts) is the prediction stage's:
this is that stage with another command and other links.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from supervisor.command import nnunet_tool
from supervisor.core.lifecycle import Words
from supervisor.core.messages import Event, LaunchFailed, Prepared, Spawn
from supervisor.core.remedies import COMBINE_VAR, Ladder, Outcome, Remedies, Setting
from supervisor.core.stall import AttemptPhase
from supervisor.evidence.allocation import read_allocation
from supervisor.stages.prediction.context import PredictContext
from supervisor.stages.prediction.stage import PredictionStage, PredictWatch
from supervisor.stages.stage import PrepareJob

if TYPE_CHECKING:
    from supervisor.daemon.process import ProcessOps

Kind = Literal["ensemble", "postprocess"]
MAX_PROCESSES = 8  # nnU-Net's default -np for both tools


@dataclass(frozen=True)
class CombineJob:
    """What one ensembling or postprocessing combines: the folders it reads (each a model's prediction, or the
    ensemble), the postprocessing find_best chose, a plans file for the label handling."""

    kind: Kind
    sources: tuple[Path, ...]
    plans_file: Path
    postprocessing_file: Path | None = None  # postprocess only


def words(kind: Kind) -> Words:
    what = "ensembled" if kind == "ensemble" else "postprocessed"
    return Words(process="nnUNetv2_ensemble" if kind == "ensemble" else "nnUNetv2_apply_postprocessing",
                 done_already=f"every input case has a verified {what} output; nothing to do",
                 progress=lambda n: f"{n} case(s) {what}",
                 relaunch=lambda late: f"the cases not yet {what} (verified outputs kept, torn ones made again)",
                 reached="", no_progress=f"no new case {what}",
                 finished=f"every input case {what} and its output verified",
                 incomplete=f"exited 0 but not every input case has a verified {what} output")


class CombineLadder(Ladder):
    """Both tools hold whole cases in each process of one pool: a host OOM or dead workers halve it."""

    def next(self, cause: str, remedies: Remedies, attempt: int, epoch: int, progressed: bool,
             phase: str = "combining") -> Outcome:
        return super().next(cause, remedies, attempt, epoch, progressed, "combining")


class CombineWatch(PredictWatch):
    working: AttemptPhase = "combining"

    def latest(self, tail: str) -> str | None:
        return None  # neither tool says which case it is on: progress is the outputs written

    def phase_of(self, said: str) -> AttemptPhase:
        return "combining"


def fitted_processes(environ: Mapping[str, str]) -> int:
    """-np fitted to the CPUs this process is given (nnU-Net's 8 at most)."""
    return max(1, min(MAX_PROCESSES, math.floor(read_allocation(environ).cpus)))


class CombineStage(PredictionStage):
    """One supervised nnUNetv2_ensemble or nnUNetv2_apply_postprocessing, for the engine."""

    watch_type = CombineWatch
    ladder_type = CombineLadder

    def __init__(self, pctx: PredictContext, job: CombineJob, ops: ProcessOps,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.processes = fitted_processes(env)  # before the ladder is made (setting)
        super().__init__(pctx, ops, env)
        self.job = job
        self.name = "ensembling" if job.kind == "ensemble" else "postprocessing"
        self.words = words(job.kind)
        self.user_np = env.get(COMBINE_VAR)  # the user's own -np, from the supervisor's environment

    def setting(self, values: dict[str, str], sources: dict[str, str], environ: Mapping[str, str]) -> Setting:
        return Setting(default_workers=1, user_env=values, user_source=sources, default_combine=self.processes)

    def _links(self, todo: list[str]) -> dict[Path, dict[str, Path]]:
        """One staged folder per source, with the links to what the tool reads of each case still to do and the
        dataset.json and plans.json it reads from the first."""
        ending = self.pctx.file_ending
        todo = [c for c in todo if c not in self.verified]  # neither tool skips a case it did: only the rest
        out: dict[Path, dict[str, Path]] = {}
        for i, source in enumerate(self.job.sources):
            if self.job.kind == "ensemble":
                names = [n for case in todo for n in (f"{case}.npz", f"{case}.pkl")]
            else:
                names = [f"{case}{ending}" for case in todo]
            links = {n: source / n for n in names}
            for meta in ("dataset.json", "plans.json"):
                if (source / meta).is_file():
                    links[meta] = source / meta
            out[self.layout.supervisor_dir / f"input-{i}"] = links
        return out

    def missing_sources(self) -> list[str]:
        """Cases still to do whose source files are not all there (the step before did not make them, or they went
        away since it verified them)."""
        todo = [c for c in self.cases if c not in self.verified and c not in self.failed]
        return [c for c in todo if any(not target.is_file() for links in self._links([c]).values()
                                       for name, target in links.items() if name not in ("dataset.json", "plans.json"))]

    def prepare(self, resume: bool, gpu_wait: Callable[[], object],
                remedies: tuple[tuple[str, str], ...]) -> PrepareJob:
        verify_and_stage = super().prepare(resume, gpu_wait, remedies)

        def run() -> tuple[Any, Event]:
            outcome, event = verify_and_stage()
            missing = self.missing_sources() if isinstance(event, Prepared) else []
            if missing:  # the tool would fail on a dangling link, attempt after attempt: say what is wrong instead
                return outcome, LaunchFailed(
                    f"the step before has no output for {len(missing)} case(s) ({', '.join(missing[:5])}): run the "
                    "prediction again, which makes what is missing before it combines", "sources_missing")
            return outcome, event

        return run

    def command(self, spawn: Spawn) -> tuple[list[str], dict[str, str]]:
        staged = [str(self.layout.supervisor_dir / f"input-{i}") for i in range(len(self.job.sources))]
        np_ = (dict(spawn.env).get(COMBINE_VAR) or self.config.nnunet.env.get(COMBINE_VAR) or self.user_np
               or str(self.processes))
        out = str(self.pctx.output)
        if self.job.kind == "ensemble":
            argv = [nnunet_tool("nnUNetv2_ensemble"), "-i", *staged, "-o", out, "-np", np_]
        else:
            assert self.job.postprocessing_file is not None
            argv = [nnunet_tool("nnUNetv2_apply_postprocessing"), "-i", staged[0], "-o", out, "-pp_pkl_file",
                    str(self.job.postprocessing_file), "-np", np_, "-plans_json", str(self.job.plans_file)]
        return argv, self._env(spawn.attempt)

    def gpu_request(self) -> tuple[str, str | None, int] | None:
        return None  # both run on the CPU

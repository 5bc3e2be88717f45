"""`nnunet-supervise predict RUN.yaml`: the run's model over the input folder, on the engine; in parts
(predict.parts: N) each part a supervisor of its own (pipeline.parts), then the whole, which verifies every output,
keeps what the parts set aside and predicts what they left; or one part alone (--part K/N: a SLURM array task)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from supervisor.daemon.process import ProcessOps
from supervisor.daemon.runner import Engine
from supervisor.errors import ExitCode
from supervisor.pipeline.parts import PartsRun, verdict
from supervisor.rundir.eventlog import EventLog
from supervisor.stages.prediction.context import PredictContext
from supervisor.stages.prediction.parts import Part
from supervisor.stages.prediction.stage import PredictionStage
from supervisor.stopsignals import stop_signals

log = logging.getLogger("nnunet_supervise")


def predict_run(config: Path, doc: Any, input_dir: str | None, output_dir: str | None, part: Part | None,
                retry_failed: bool, no_parts: bool = False) -> int:
    pctx = PredictContext.load(config, doc, input_dir, output_dir, part)
    pctx = replace(pctx, retry_failed=retry_failed)
    parts = pctx.config.predict.parts
    if part is None and not no_parts and parts != "auto" and parts > 1:
        code = _parts(pctx, parts, retry_failed)
        if code is not None:
            return code
    ops = ProcessOps(log_cap=pctx.config.process.attempt_log_max_bytes)
    return Engine(PredictionStage(pctx, ops), ops).run()


def _parts(pctx: PredictContext, n: int, retry_failed: bool) -> int | None:
    """The parts at once, all on the run's device (a run has one); None: go on with the whole."""
    stop: list[str] = []
    with stop_signals(stop.append):
        folder = pctx.layout.supervisor_dir
        folder.mkdir(parents=True, exist_ok=True)
        command = ["predict", str(pctx.config_path), "-i", str(pctx.input), "-o", str(pctx.output),
                   *(["--retry-failed"] if retry_failed else [])]
        codes = PartsRun(command, [None] * n, folder, pctx.layout.lock_file.name, EventLog(pctx.layout.events_file),
                         lambda: stop[0] if stop else None).run()
    code = verdict(codes)
    if code is None and stop:
        return int(ExitCode.STOPPED)
    return code

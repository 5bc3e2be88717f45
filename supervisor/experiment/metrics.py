"""The experiment's Prometheus metrics: the fold supervisors' families, labelled by configuration and fold, served
by the experiment supervisor alone (the folds of an experiment serve none of their own: one port, one scrape).

Read from each fold's state.json on the experiment supervisor's tick; prometheus_client is imported only when
metrics are configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.schedule import CellStatus, State
from supervisor.observe.progress import checkpoint_age_s
from supervisor.rundir.statefile import StateStore

log = logging.getLogger("nnunet_supervise")

FOLD_STATES = ("init", "starting", "running", "backoff", "stopping", "finished", "failed", "stopped")


class ExperimentMetrics:
    """Gauges per cell and per experiment; `update` after each scheduler step, the textfile at most every 15 s."""

    def __init__(self, exp: ExperimentContext, clock: Callable[[], float] = time.monotonic) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        m = exp.spec.metrics
        self.exp, self.clock = exp, clock
        self.textfile = None if m.textfile is None else Path(m.textfile)
        self._written: float | None = None
        self.registry = r = CollectorRegistry()
        # a study's cells are labelled by trainer and plans too (the single-trainer experiment's labels as before)
        labels = ["experiment", *(["trainer", "plans"] if exp.is_study else []), "configuration", "fold"]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"nnunet_supervise_{name}", doc, [*labels, *extra], registry=r)

        self.epoch = gauge("epoch", "Current epoch of the fold's trainer (nnU-Net's index)")
        self.num_epochs = gauge("num_epochs", "Epochs the fold's trainer trains in total")
        self.attempt = gauge("attempt", "Attempt number of the fold (launches of its trainer)")
        self.restarts = gauge("restarts", "Relaunches of the fold after failures")
        self.age = gauge("last_checkpoint_age_seconds", "Seconds since the fold's newest checkpoint was written")
        self.state = gauge("state", "1 for the fold supervisor's current state", ("state",))
        self.cells = Gauge("nnunet_supervise_experiment_folds", "Folds of the experiment by status",
                           ["experiment", "status"], registry=r)
        self.name = str(exp.config_path)
        self.serving = False
        if m.port is not None:
            try:
                start_http_server(m.port, addr=m.host, registry=r)
                self.serving = True
                log.info("metrics on http://%s:%d/metrics", m.host, m.port)
            except OSError as exc:
                log.warning("metrics: cannot serve on %s:%d (%s); the experiment goes on without the endpoint",
                            m.host, m.port, exc.strerror or exc)

    def update(self, s: State, wall_now: float) -> None:
        for cell in self.exp.cells:
            layout = self.exp.fold_layout(cell)
            state = StateStore(layout.state_file).read().data  # quietly: a damaged file says so in `status`
            labels = {"experiment": self.name, **({"trainer": str(cell.trainer), "plans": str(cell.plans)}
                                                  if cell.trainer is not None else {}),
                      "configuration": cell.configuration, "fold": str(cell.fold)}
            for key, gauge in (("epoch", self.epoch), ("num_epochs", self.num_epochs), ("attempt", self.attempt),
                               ("restarts", self.restarts)):
                value = state.get(key)
                if isinstance(value, int):
                    gauge.labels(**labels).set(value)
            age = checkpoint_age_s(layout.fold_dir, wall_now)
            if age is not None:
                self.age.labels(**labels).set(age)
            current = "finished" if layout.is_finished() else str(state.get("state", "init"))
            for name in FOLD_STATES:
                self.state.labels(**labels, state=name).set(1.0 if name == current else 0.0)
        for status in CellStatus:
            self.cells.labels(experiment=self.name, status=status.value).set(
                sum(st.status is status for st in s.cells.values()))
        self._maybe_write()

    def _maybe_write(self, force: bool = False) -> None:
        if self.textfile is None:
            return
        now = self.clock()
        if not force and self._written is not None and now - self._written < 15.0:
            return
        self._written = now
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(str(self.textfile), self.registry)
        except OSError as exc:
            log.warning("could not write metrics to %s: %s", self.textfile, exc)

    def close(self) -> None:
        self._maybe_write(force=True)

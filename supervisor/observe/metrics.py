"""Prometheus metrics (`metrics: {port: N}` serves them; `metrics: {textfile: PATH}` writes node_exporter's
textfile format): epoch, total epochs, restarts, state, last checkpoint age, stalls, GPU faults; for a prediction the
outputs quarantined and the cases set aside.

The runner calls `update` with what it already has on every step and `count` for events; neither does I/O
except the textfile write, at most every `textfile_every_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile

log = logging.getLogger(__name__)

STATES = ("init", "starting", "running", "backoff", "stopping", "finished", "failed", "stopped")
COUNTED = {"stall": "stalls", "gpu_fault": "gpu_faults", "exit": "exits", "requeue": "requeues",
           # a prediction's: outputs found torn or wrong (quarantined, made again), cases set aside as poison
           "output_corrupt": "outputs_corrupt", "case_failed": "cases_failed"}


class Metrics:
    def __init__(self, run: str, port: int | None = None, host: str = "127.0.0.1", textfile: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, textfile_every_s: float = 15.0) -> None:
        self.registry = CollectorRegistry()
        self.textfile, self.clock, self._every = textfile, clock, textfile_every_s
        self._written: float | None = None
        labels = {"run": run}
        r = self.registry

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"nnunet_supervise_{name}", doc, ["run", *extra], registry=r)

        self.epoch = gauge("epoch", "Current epoch of the trainer (nnU-Net's index)").labels(**labels)
        self.num_epochs = gauge("num_epochs", "Epochs the trainer will train in total").labels(**labels)
        self.attempt = gauge("attempt", "Attempt number (launches of the trainer)").labels(**labels)
        self.restarts = gauge("restarts", "Relaunches after failures").labels(**labels)
        self.checkpoint_age = gauge("last_checkpoint_age_seconds", "Seconds since the newest checkpoint was "
                                    "written").labels(**labels)
        self._state = gauge("state", "1 for the supervisor's current state", ("state",))
        self._labels = labels
        self.counters = {name: Counter(f"nnunet_supervise_{name}", f"{event} events", ["run"],
                                       registry=r).labels(**labels) for event, name in COUNTED.items()}
        self.serving = False
        if port is not None:
            try:
                start_http_server(port, addr=host, registry=r)
            except OSError as exc:  # the port is taken (another run from the same template): train without it
                log.warning("metrics: cannot serve on %s:%d (%s); the run goes on without the endpoint%s", host, port,
                            exc.strerror or exc, " (the textfile is still written)" if textfile else "")
            else:
                self.serving = True
                log.info("metrics on http://%s:%d/metrics", host, port)

    def update(self, state: str, attempt: int, restarts: int, epoch: int | None, num_epochs: int | None,
               checkpoint_age_s: float | None) -> None:
        for s in STATES:
            self._state.labels(state=s, **self._labels).set(1.0 if s == state else 0.0)
        self.attempt.set(attempt)
        self.restarts.set(restarts)
        if epoch is not None:
            self.epoch.set(epoch)
        if num_epochs is not None:
            self.num_epochs.set(num_epochs)
        if checkpoint_age_s is not None:
            self.checkpoint_age.set(checkpoint_age_s)
        self._maybe_write()

    def count(self, event: str, fields: object = None) -> None:
        name = COUNTED.get(event)
        if name is not None:
            self.counters[name].inc()

    def _maybe_write(self, force: bool = False) -> None:
        if self.textfile is None:
            return
        now = self.clock()
        if not force and self._written is not None and now - self._written < self._every:
            return
        self._written = now
        try:
            write_to_textfile(str(self.textfile), self.registry)  # tmp + rename: node_exporter never sees half
        except OSError as exc:
            log.warning("could not write metrics to %s: %s", self.textfile, exc)

    def close(self) -> None:
        self._maybe_write(force=True)

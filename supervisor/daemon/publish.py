"""Say where the run is: state.json always, and whoever listens (systemd's STATUS=, metrics, the terminal line)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.core.lifecycle import LoopState, Phase
from supervisor.deploy.sdnotify import Notifier
from supervisor.rundir.eventlog import EventLog
from supervisor.rundir.statefile import StateStore

if TYPE_CHECKING:
    from supervisor.observe.metrics import Metrics
    from supervisor.observe.notify import Notifications
    from supervisor.stages.stage import Stage

SCHEMA = 1


@dataclass(frozen=True)
class Facts:
    """What state.json says besides the lifecycle's own state: gathered by the engine at each step; `stage` is the
    stage's own part (a fold's epochs and checkpoints, a preprocessing's cases)."""

    stage_name: str
    pid: int | None
    pid_create_time: float | None
    max_restarts: int
    config: str
    started_ts: float
    slurm_job_id: str | None
    main_loop_max_gap_s: float
    stage: dict[str, Any]


def state_document(s: LoopState, f: Facts, now: float) -> dict[str, Any]:
    """The body of state.json (documented in the README; `status` and `stop` read it)."""
    return {
        "schema": SCHEMA,
        "stage": f.stage_name,
        "state": s.phase.value,
        "attempt": s.attempt,
        "restarts": s.restarts,
        "max_restarts": f.max_restarts,
        "best_epoch": s.best_epoch,
        "pid": f.pid,
        "pid_create_time": f.pid_create_time,
        "supervisor_pid": os.getpid(),
        "last_exit": s.last_exit,
        "stop_reason": s.stop_reason,
        "exit_code": s.exit_code,
        "resumable": s.phase not in (Phase.FINISHED, Phase.FAILED),
        "next_launch_in_s": (round(s.deadline - now, 3)
                             if s.phase is Phase.BACKOFF and s.deadline is not None else None),
        "config": f.config,
        "started_ts": f.started_ts,
        "slurm_job_id": f.slurm_job_id,
        "main_loop_max_gap_s": round(f.main_loop_max_gap_s, 1),
        "remedies": s.remedies.document(),
        **f.stage,
    }


class Publisher:
    """Writes state.json (only when it changed) and feeds the listeners that are configured."""

    def __init__(self, stage: Stage, store: StateStore, notifier: Notifier, metrics: Metrics | None,
                 on_status: Callable[[dict[str, Any]], None] | None,
                 notifications: Notifications | None = None) -> None:
        self.stage, self.store, self.notifier = stage, store, notifier
        self.metrics, self.on_status, self.notifications = metrics, on_status, notifications

    @classmethod
    def for_stage(cls, stage: Stage, notifier: Notifier, on_status: Callable[[dict[str, Any]], None] | None,
                  events: EventLog, clock: Callable[[], float]) -> Publisher:
        """The listeners the config asks for, each told every event it counts (prometheus_client and apprise are
        imported only when metrics or notifications are configured)."""
        m, n, place = stage.config.metrics, stage.config.notify, str(stage.work_dir)
        metrics = notifications = None
        if m.port is not None or m.textfile is not None:
            from supervisor.observe.metrics import Metrics

            metrics = Metrics(place, m.port, m.host, None if m.textfile is None else Path(m.textfile),
                              clock)
            events.listeners.append(metrics.count)
        if n.urls:
            from supervisor.observe.notify import Notifications

            notifications = Notifications(place, list(n.urls), list(n.on), n.repeated_failures)
            if stage.name != "training":  # a prediction counts cases, not epochs
                words = stage.words
                notifications.finished_words = lambda count: f"{stage.name} finished: {words.progress(count)}"
            events.listeners.append(notifications.on_event)
        return cls(stage, StateStore(stage.files.state_file), notifier, metrics, on_status, notifications)

    def close(self) -> None:
        """Last metrics written, queued notifications delivered (bounded)."""
        if self.metrics is not None:
            self.metrics.close()
        if self.notifications is not None:
            self.notifications.close()

    @property
    def listening(self) -> bool:
        """Does anyone besides state.json want to hear (so that checkpoints are worth a stat on every step)?"""
        return self.notifier.enabled or self.metrics is not None or self.on_status is not None

    def publish(self, s: LoopState, f: Facts, now: float, wall_now: float) -> None:
        self.store.save(state_document(s, f, now))
        if not self.listening:
            return
        line, fields = self.stage.status(s.phase.value, s.attempt, f.stage, wall_now)
        self.notifier.status(line)
        if self.metrics is not None:
            self.metrics.update(s.phase.value, s.attempt, s.restarts, fields.get("epoch"), fields.get("num_epochs"),
                                fields.get("checkpoint_age_s"))
        if self.on_status is not None:
            self.on_status({"state": s.phase.value, "attempt": s.attempt, **fields})

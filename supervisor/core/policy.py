"""Restart policy: exponential backoff with jitter, a restart budget, and a no-progress limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: the core imports nothing that touches the OS
    from supervisor.config import RestartSection


@dataclass(frozen=True)
class RestartPolicy:
    """Numbers that decide whether and when to relaunch; pure, so every rule is a unit test."""

    max_restarts: int = 10
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 600.0
    max_attempts_without_progress: int = 3
    jitter: float = 0.1  # up to +10 %, so that many runs failing together do not relaunch in lockstep

    @classmethod
    def from_config(cls, section: RestartSection) -> RestartPolicy:
        return cls(section.max_restarts, section.backoff_initial_s, section.backoff_max_s,
                   section.max_attempts_without_progress)

    def backoff(self, failures_in_row: int, rand: float) -> float:
        """Delay before the next launch after `failures_in_row` (>= 1) failures since the last progress.

        rand in [0, 1) scales the jitter; rand = 0 gives the exact sequence initial, 2x, 4x, ... capped at max.
        """
        exponent = max(0, failures_in_row - 1)
        base = self.backoff_initial_s * (2.0 ** min(exponent, 60))
        return float(min(self.backoff_max_s, base * (1.0 + self.jitter * rand)))

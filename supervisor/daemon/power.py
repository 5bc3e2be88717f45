"""Read the battery (psutil); what a reading means is decided in supervisor.core.power."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import psutil

from supervisor.core.power import BatteryReading

log = logging.getLogger(__name__)


class _Battery(Protocol):
    """The two fields of psutil's sbattery we use."""

    @property
    def percent(self) -> float: ...

    @property
    def power_plugged(self) -> bool | None: ...


def read_battery(sensors: Callable[[], _Battery | None] = psutil.sensors_battery) -> BatteryReading | None:
    """The battery now, or None when there is none or psutil cannot tell whether mains power is plugged."""
    try:
        battery = sensors()
    except Exception:  # a flaky sysfs or an unsupported platform must never take the daemon down
        log.debug("reading the battery failed", exc_info=True)
        return None
    if battery is None or battery.power_plugged is None:
        return None  # unknown plug state: stopping a training run on a guess is worse than not stopping
    percent = float(battery.percent)
    if not math.isfinite(percent):
        return None
    return BatteryReading(percent=percent, on_battery=not battery.power_plugged)

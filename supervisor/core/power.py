"""Power events, decided: successive battery readings become notices, and a low battery a resumable stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from supervisor.core.messages import Record, StopRequested


@dataclass(frozen=True)
class BatteryReading:
    """One look at the battery: charge in percent and whether the machine runs on it."""

    percent: float
    on_battery: bool


@dataclass(frozen=True)
class PowerNotice:
    """A change worth an events.jsonl `power` record; stop=True asks the runner to stop resumably."""

    kind: Literal["on_battery", "on_mains", "battery_low"]
    percent: float | None
    message: str
    stop: bool


class BatteryWatch:
    """Turns successive battery readings into notices, one per change (mains <-> battery, low once)."""

    def __init__(self, stop_percent: float | None) -> None:
        self.stop_percent = stop_percent  # None: report battery changes but never stop for them
        self._on_battery = False  # until told otherwise, assume mains: a first reading on mains says nothing
        self._low_sent = False

    def observe(self, reading: BatteryReading | None) -> list[PowerNotice]:
        """Notices for what changed since the last reading; None (no battery, unknown) changes nothing."""
        if reading is None:
            return []
        notices: list[PowerNotice] = []
        pct = reading.percent
        if reading.on_battery and not self._on_battery:
            notices.append(PowerNotice("on_battery", pct, f"power: on battery ({pct:.0f}%)", stop=False))
        elif not reading.on_battery and self._on_battery:
            notices.append(PowerNotice("on_mains", pct, f"power: back on mains ({pct:.0f}%)", stop=False))
            self._low_sent = False  # a later discharge may need to stop again
        self._on_battery = reading.on_battery
        if (reading.on_battery and not self._low_sent and self.stop_percent is not None
                and pct <= self.stop_percent):
            self._low_sent = True
            notices.append(PowerNotice("battery_low", pct, f"power: battery at {pct:.0f}% "
                                       f"(stop at {self.stop_percent:g}%)", stop=True))
        return notices


def power_outcome(notices: list[PowerNotice]) -> tuple[list[Record], StopRequested | None]:
    """What the run does about power notices: each is recorded; the one that says stop stops resumably."""
    records = [Record("power", {"kind": n.kind, "percent": n.percent, "message": n.message}) for n in notices]
    stop = next((StopRequested(n.message) for n in notices if n.stop), None)
    return records, stop

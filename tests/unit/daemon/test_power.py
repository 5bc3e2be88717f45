"""Reading the battery through psutil (a fake one, and the real one)."""

from __future__ import annotations

from collections import namedtuple

from supervisor.core.power import BatteryReading
from supervisor.daemon.power import read_battery

# psutil's sbattery shape; power_plugged None is psutil's "cannot tell".
SBattery = namedtuple("SBattery", "percent secsleft power_plugged")


def test_read_battery_from_psutil_shape() -> None:
    assert read_battery(lambda: SBattery(42, 3600, False)) == BatteryReading(42.0, on_battery=True)
    assert read_battery(lambda: SBattery(100, -2, True)) == BatteryReading(100.0, on_battery=False)


def test_read_battery_none_when_no_battery_or_unknown() -> None:
    assert read_battery(lambda: None) is None
    assert read_battery(lambda: SBattery(42, -1, None)) is None  # psutil cannot tell whether it is plugged in


def test_read_battery_none_when_psutil_fails() -> None:
    def broken() -> SBattery:
        raise OSError("sysfs went away")

    assert read_battery(broken) is None


def test_read_battery_real_psutil_does_not_raise() -> None:
    reading = read_battery()
    assert reading is None or isinstance(reading, BatteryReading)

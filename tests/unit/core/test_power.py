"""Battery readings into notices: pure, no clock."""

from __future__ import annotations

from supervisor.core.power import BatteryReading, BatteryWatch, PowerNotice


def kinds(notices: list[PowerNotice]) -> list[tuple[str, bool]]:
    return [(n.kind, n.stop) for n in notices]


def test_mains_battery_low_mains() -> None:
    watch = BatteryWatch(stop_percent=20)
    assert watch.observe(BatteryReading(90, on_battery=False)) == []
    assert kinds(watch.observe(BatteryReading(88, on_battery=True))) == [("on_battery", False)]
    assert watch.observe(BatteryReading(50, on_battery=True)) == []
    low = watch.observe(BatteryReading(20, on_battery=True))
    assert kinds(low) == [("battery_low", True)]
    assert low[0].percent == 20 and "battery at 20%" in low[0].message
    assert watch.observe(BatteryReading(12, on_battery=True)) == []  # once, not at every lower reading
    assert kinds(watch.observe(BatteryReading(13, on_battery=False))) == [("on_mains", False)]
    assert watch.observe(BatteryReading(40, on_battery=False)) == []


def test_first_reading_already_low_on_battery_gives_both_in_order() -> None:
    watch = BatteryWatch(stop_percent=15)
    assert kinds(watch.observe(BatteryReading(9, on_battery=True))) == [("on_battery", False), ("battery_low", True)]


def test_low_again_after_a_recharge() -> None:
    watch = BatteryWatch(stop_percent=15)
    watch.observe(BatteryReading(10, on_battery=True))
    watch.observe(BatteryReading(11, on_battery=False))
    assert kinds(watch.observe(BatteryReading(10, on_battery=True))) == [("on_battery", False), ("battery_low", True)]


def test_low_charge_on_mains_is_not_a_stop() -> None:
    watch = BatteryWatch(stop_percent=20)
    assert watch.observe(BatteryReading(5, on_battery=False)) == []


def test_no_stop_percent_never_stops() -> None:
    watch = BatteryWatch(stop_percent=None)
    seen = [n for pct in (80, 30, 5, 1, 0) for n in watch.observe(BatteryReading(pct, on_battery=True))]
    assert kinds(seen) == [("on_battery", False)]


def test_no_battery_means_no_notices_and_no_change() -> None:
    watch = BatteryWatch(stop_percent=20)
    assert watch.observe(None) == []
    watch.observe(BatteryReading(50, on_battery=True))
    assert watch.observe(None) == []  # a missed reading is not "back on mains"
    assert kinds(watch.observe(BatteryReading(10, on_battery=True))) == [("battery_low", True)]


def test_power_notices_are_recorded_and_the_low_one_stops_resumably() -> None:
    from supervisor.core.messages import Record, StopRequested
    from supervisor.core.power import power_outcome

    watch = BatteryWatch(stop_percent=15)
    records, stop = power_outcome(watch.observe(BatteryReading(40, on_battery=True)))
    assert records == [Record("power", {"kind": "on_battery", "percent": 40, "message": "power: on battery (40%)"})]
    assert stop is None
    records, stop = power_outcome(watch.observe(BatteryReading(12, on_battery=True)))
    assert [r.fields["kind"] for r in records] == ["battery_low"]
    assert stop == StopRequested("power: battery at 12% (stop at 15%)")
    assert power_outcome([]) == ([], None)

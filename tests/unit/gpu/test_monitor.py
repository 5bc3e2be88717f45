"""The GPU monitor over a fake NVML: events, health, memory release, its thread."""

from __future__ import annotations

import logging
import queue
import time

import pytest

from supervisor.gpu.monitor import GpuFault, GpuHealth, GpuMonitor, create_monitor, wait_memory_released
from supervisor.gpu.nvml import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    NvmlError,
    NvmlEvent,
)
from tests.unit.gpu.conftest import H100, HEALTHY, UUIDS, FakeClock, FakeNvml, monitor_for


def test_application_xid_is_a_retryable_fault() -> None:
    nvml = FakeNvml()
    nvml.events = [NvmlEvent(UUIDS[1], EVENT_XID_CRITICAL, 13)]
    monitor, out = monitor_for(nvml, ["0", "1"])
    monitor.run_once(0.0)
    fault = out[0]
    assert isinstance(fault, GpuFault) and out == [GpuFault("1", 13, "xid", False, fault.message)]
    assert "Xid 13" in fault.message and "graphics engine" in fault.message
    assert [c for c in nvml.calls if c.startswith("register")] == ["register handle0 0xa", "register handle1 0xa"]


def test_xid_79_is_hardware() -> None:
    nvml = FakeNvml()
    nvml.events = [NvmlEvent(UUIDS[0], EVENT_XID_CRITICAL, 79)]
    monitor, out = monitor_for(nvml, ["0", "1"])
    monitor.run_once(0.0)
    fault = out[0]
    assert isinstance(fault, GpuFault)
    assert (fault.gpu, fault.xid, fault.hardware) == ("0", 79, True)
    assert "fallen off the bus" in fault.message and "do not relaunch" in fault.message


def test_double_bit_ecc_event_is_hardware_and_unknown_xid_is_not() -> None:
    nvml = FakeNvml(n=1)
    nvml.events = [NvmlEvent(UUIDS[0], EVENT_DOUBLE_BIT_ECC, 0), NvmlEvent(None, EVENT_XID_CRITICAL, 4242)]
    monitor, out = monitor_for(nvml)
    monitor.run_once(0.0)
    monitor.run_once(1.0)
    faults = [f for f in out if isinstance(f, GpuFault)]
    assert [(f.gpu, f.kind, f.xid, f.hardware) for f in faults] == [
        ("0", "double_bit_ecc", None, True), ("0", "xid", 4242, False)]  # one GPU: an unreadable UUID is still it


def test_failed_event_wait_drops_events_and_samples_at_once() -> None:
    nvml = FakeNvml(n=1)
    nvml.events = [NvmlError("gpu_lost", "GPU is lost")]
    monitor, out = monitor_for(nvml)
    monitor.run_once(0.0)
    assert nvml.freed == ["event-set"]
    nvml.health["handle0"]["temperature"] = NvmlError("gpu_lost", "GPU is lost")
    monitor.run_once(1.0)  # sampled again long before the 30 s cadence
    health = out[-1]
    assert isinstance(health, GpuHealth) and health.hardware and "GPU is lost" in health.problems[0]


def test_healthy_gpu_reports_nothing_and_samples_on_the_cadence() -> None:
    nvml = FakeNvml(n=1)
    monitor, out = monitor_for(nvml)
    for now in (0.0, 10.0, 29.9, 30.0):
        monitor.run_once(now)
    assert out == []
    assert nvml.calls.count("temperature handle0") == 2  # at 0 and at 30


def test_retired_pages_pending_reported_once_then_recovery() -> None:
    nvml = FakeNvml(n=1)
    nvml.health["handle0"]["retired_pages_pending"] = True
    monitor, out = monitor_for(nvml)
    monitor.run_once(0.0)
    monitor.run_once(30.0)  # unchanged: not news
    nvml.health["handle0"]["retired_pages_pending"] = False
    monitor.run_once(60.0)
    assert [type(h) for h in out] == [GpuHealth, GpuHealth]
    first, recovered = out
    assert isinstance(first, GpuHealth) and isinstance(recovered, GpuHealth)
    assert "retired memory pages pending" in first.problems[0] and not first.hardware
    assert first.fields["retired_pages_pending"] is True and first.fields["temperature_c"] == 41
    assert recovered.problems == []


def test_hw_slowdown_throttle_is_a_problem_not_hardware() -> None:
    nvml = FakeNvml(n=1)
    nvml.health["handle0"]["throttle_reasons"] = 0x8 | 0x4  # hw_slowdown + sw_power_cap
    monitor, out = monitor_for(nvml)
    monitor.run_once(0.0)
    health = out[0]
    assert isinstance(health, GpuHealth)
    assert health.problems == ["clocks slowed by hardware: hw_slowdown"] and not health.hardware
    assert health.fields["throttle_reasons"] == ["sw_power_cap", "hw_slowdown"]


def test_recovery_action_and_row_remap_failure_are_hardware() -> None:
    nvml = FakeNvml()
    nvml.health["handle0"]["recovery_action"] = 1
    nvml.health["handle1"]["remapped_rows"] = (0, 3, False, True)
    monitor, out = monitor_for(nvml, ["0", "1"])
    monitor.run_once(0.0)
    reset, remap = out
    assert isinstance(reset, GpuHealth) and isinstance(remap, GpuHealth)
    assert reset.hardware and reset.fields["recovery_action"] == "gpu_reset"
    assert remap.hardware and remap.problems == ["row remapping failed: the GPU needs service"]


def test_not_supported_metrics_and_events_degrade() -> None:
    nvml = FakeNvml(n=1, events=False)
    for metric in HEALTHY:
        nvml.health["handle0"][metric] = NvmlError("not_supported", "Not Supported")
    monitor, out = monitor_for(nvml)
    monitor.run_once(0.0)
    monitor.run_once(30.0)
    assert out == []
    assert nvml.freed == ["event-set"]  # nothing registered: the set is given back, sampling goes on
    assert nvml.calls.count("temperature handle0") == 1  # not asked again once NVML said not supported
    assert monitor.sample(monitor.devices[0]) == ([], {"name": H100, "uuid": UUIDS[0]}, False)


def test_event_set_free_failure_is_not_fatal() -> None:
    class BrokenFree(FakeNvml):
        def event_set_free(self, event_set: object) -> None:
            raise NvmlError("gpu_lost", "GPU is lost")

    nvml = BrokenFree(n=1)
    nvml.events = [NvmlError("error", "Unknown Error")]
    monitor, _ = monitor_for(nvml)
    monitor.run_once(0.0)
    monitor.stop()  # never started: closes at once
    assert nvml.shut_down


def test_create_monitor_off_for_cpu_and_hidden_gpus() -> None:
    assert create_monitor("cpu", None, print, FakeNvml) == (None, "GPU monitor: off (device cpu)")
    monitor, line = create_monitor("cuda", "-1", print, FakeNvml)
    assert monitor is None and "shows no GPU" in line


def test_create_monitor_without_a_driver() -> None:
    pynvml = pytest.importorskip("pynvml")

    def missing_driver() -> FakeNvml:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monitor, line = create_monitor("cuda", None, print, missing_driver)
    assert monitor is None and line.startswith("GPU monitor: off (NVML unavailable") and "Not Found" in line

    class NoDriver(FakeNvml):
        def init(self) -> None:
            raise NvmlError("no_driver", "Driver Not Loaded")

    assert create_monitor("cuda", "0", print, NoDriver)[0] is None


def test_create_monitor_with_the_real_pynvml() -> None:
    monitor, line = create_monitor("cuda", None, print)  # RealNvml: no driver on a CI machine
    if monitor is None:
        assert line.startswith("GPU monitor: off") and "\n" not in line
    else:  # a machine with a GPU
        monitor.close()
        assert line.startswith("GPU monitor: watching GPU 0 (")


def test_create_monitor_names_the_gpus() -> None:
    monitor, line = create_monitor("cuda", "0", print, FakeNvml)
    assert monitor is not None and monitor.gpus == ["0"]
    assert line == f"GPU monitor: watching GPU 0 ({H100}, {UUIDS[0]})"
    monitor, line = create_monitor("cuda", "5", print, FakeNvml)
    assert monitor is None and line.startswith("GPU monitor: off (no GPU found: GPU 5")


def test_memory_released_after_two_polls(caplog: pytest.LogCaptureFixture) -> None:
    nvml, clock = FakeNvml(), FakeClock()
    nvml.procs["handle0"] = [[(100, 1 << 30), (555, 1 << 20)], [(100, 1 << 30)], [(555, 1 << 20)]]
    with caplog.at_level(logging.INFO, logger="supervisor.gpu.monitor"):
        assert wait_memory_released(nvml, ["0", "1"], {100, 101}, 30.0, clock, clock.sleep) == []
    assert clock.sleeps == [0.5, 0.5]  # pid 555 belongs to someone else and is not waited for
    # the relaunch held back is said when the wait begins and when it ends, not only on giving up
    assert "waiting up to 30 s for pids [100] to free their GPU memory" in caplog.text
    assert "GPU memory is free after 1.0 s" in caplog.text


def test_memory_still_held_at_the_deadline() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    nvml.procs["handle1"] = [[(101, None), (100, 1 << 30)]]
    assert wait_memory_released(nvml, ["1"], {100, 101}, 2.0, clock, clock.sleep) == [100, 101]
    assert sum(clock.sleeps) == pytest.approx(2.0) and clock.now == pytest.approx(2.0)
    assert wait_memory_released(nvml, ["1"], set(), 2.0, clock, clock.sleep) == []


def test_thread_puts_faults_and_stops_promptly() -> None:
    nvml = FakeNvml(n=1)
    nvml.events = [NvmlEvent(UUIDS[0], EVENT_XID_CRITICAL, 31)]
    nvml.block.set()
    events: queue.Queue[object] = queue.Queue()
    monitor = GpuMonitor(nvml, ["0"], events.put, event_wait_ms=200)
    monitor.start()
    fault = events.get(timeout=5)
    assert isinstance(fault, GpuFault) and fault.xid == 31 and not fault.hardware
    assert nvml.waiting.wait(timeout=5)  # the thread is inside NVML's blocking wait
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 2.0
    assert monitor._thread is not None and not monitor._thread.is_alive()
    assert nvml.freed == ["event-set"] and nvml.shut_down


# ---- what the run does about a report ----

def test_an_application_fault_is_recorded_and_left_to_the_trainer() -> None:
    from supervisor.gpu.monitor import gpu_outcome

    records, abort = gpu_outcome(GpuFault("0", 13, "xid", False, "GPU 0: Xid 13"))
    assert [(r.event, r.fields["xid"], r.fields["hardware"]) for r in records] == [("gpu_fault", 13, False)]
    assert abort is None


def test_a_hardware_fault_gives_up_naming_the_gpu() -> None:
    from supervisor.gpu.monitor import gpu_outcome

    records, abort = gpu_outcome(GpuFault("1", 79, "xid", True, "GPU 1: Xid 79 (GPU has fallen off the bus)"))
    assert [r.event for r in records] == ["gpu_fault"]
    assert abort is not None and abort.kind == "gpu_fault" and "GPU 1" in abort.message
    assert "fallen off the bus" in abort.message


def test_health_is_recorded_and_a_fatal_reading_is_also_a_fault() -> None:
    from supervisor.gpu.monitor import gpu_outcome

    records, abort = gpu_outcome(GpuHealth("0", ["clocks slowed by hardware: hw_slowdown"], {}, hardware=False))
    assert [r.event for r in records] == ["gpu_health"] and abort is None
    records, abort = gpu_outcome(GpuHealth("0", ["row remapping failed: the GPU needs service"], {}, hardware=True))
    assert [r.event for r in records] == ["gpu_health", "gpu_fault"]
    assert records[1].fields == {"gpu": "0", "xid": None, "kind": "health", "hardware": True,
                                 "message": "row remapping failed: the GPU needs service"}
    assert abort is not None and abort.kind == "gpu_fault"

"""GPU monitor: the Xid table, CUDA_VISIBLE_DEVICES, and the monitor driven through a scripted fake NVML."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.gpu import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    XID_ACTIONS,
    GpuFault,
    GpuHealth,
    GpuMonitor,
    NvmlError,
    NvmlEvent,
    RealNvml,
    classify_xid,
    create_monitor,
    parse_visible_devices,
    resolve_gpus,
    wait_memory_released,
)

H100 = "NVIDIA H100 80GB HBM3"
UUIDS = ["GPU-1234abcd-0000-0000-0000-000000000000", "GPU-5678ef00-0000-0000-0000-000000000000"]
HEALTHY: dict[str, Any] = {"temperature": 41, "throttle_reasons": 0, "retired_pages_pending": False,
                           "remapped_rows": (0, 0, False, False), "recovery_action": 0}


class FakeNvml:
    """Nvml with scripted events, health readings (a value or an NvmlError to raise) and process lists."""

    def __init__(self, n: int = 2, events: bool = True) -> None:
        self.handles = [f"handle{i}" for i in range(n)]
        self.uuids = dict(zip(self.handles, UUIDS, strict=False))
        self.health: dict[str, dict[str, Any]] = {h: dict(HEALTHY) for h in self.handles}
        self.events: list[NvmlEvent | NvmlError] = []  # what the next waits return, in order
        self.procs: dict[str, list[list[tuple[int, int | None]]]] = {}  # per handle: one list per poll
        self.supports_events = events
        self.block = threading.Event()  # set: an empty event script blocks like NVML until the timeout
        self.waiting = threading.Event()  # set by the first blocking wait, so a test knows the thread is inside
        self.calls: list[str] = []
        self.inited = self.shut_down = False
        self.freed: list[object] = []

    def init(self) -> None:
        self.inited = True

    def shutdown(self) -> None:
        self.shut_down = True

    def device_count(self) -> int:
        return len(self.handles)

    def handle_by_index(self, index: int) -> object:
        self.calls.append(f"by_index {index}")
        if index >= len(self.handles):
            raise NvmlError("error", "Invalid Argument")
        return self.handles[index]

    def handle_by_uuid(self, uuid: str) -> object:
        self.calls.append(f"by_uuid {uuid}")
        for handle, known in self.uuids.items():
            if known == uuid:
                return handle
        raise NvmlError("error", "Not Found")

    def name(self, handle: object) -> str:
        return H100

    def uuid(self, handle: object) -> str:
        return self.uuids[str(handle)]

    def event_set_create(self) -> object:
        return "event-set"

    def supported_event_types(self, handle: object) -> int:
        if not self.supports_events:
            raise NvmlError("not_supported", "Not Supported")
        return EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC | 0x1000

    def register_events(self, handle: object, event_types: int, event_set: object) -> None:
        self.calls.append(f"register {handle} {event_types:#x}")

    def event_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent:
        if self.events:
            item = self.events.pop(0)
            if isinstance(item, NvmlError):
                raise item
            return item
        if self.block.is_set():
            self.waiting.set()
            threading.Event().wait(timeout_ms / 1000)  # stands for NVML's blocking wait
        raise NvmlError("timeout", "Timeout")

    def event_set_free(self, event_set: object) -> None:
        self.freed.append(event_set)

    def _reading(self, handle: object, metric: str) -> Any:
        self.calls.append(f"{metric} {handle}")
        value = self.health[str(handle)][metric]
        if isinstance(value, NvmlError):
            raise value
        return value

    def temperature(self, handle: object) -> int:
        return int(self._reading(handle, "temperature"))

    def throttle_reasons(self, handle: object) -> int:
        return int(self._reading(handle, "throttle_reasons"))

    def retired_pages_pending(self, handle: object) -> bool:
        return bool(self._reading(handle, "retired_pages_pending"))

    def remapped_rows(self, handle: object) -> tuple[int, int, bool, bool]:
        rows: tuple[int, int, bool, bool] = self._reading(handle, "remapped_rows")
        return rows

    def recovery_action(self, handle: object) -> int:
        return int(self._reading(handle, "recovery_action"))

    def compute_processes(self, handle: object) -> list[tuple[int, int | None]]:
        script = self.procs.get(str(handle), [[]])
        return script.pop(0) if len(script) > 1 else script[0]  # the last poll's answer repeats


class FakeClock:
    """Monotonic time that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def monitor_for(nvml: FakeNvml, gpus: list[str] | None = None) -> tuple[GpuMonitor, list[object]]:
    out: list[object] = []
    # event_wait_ms=0: where no event set exists, run_once's idle wait returns at once
    return GpuMonitor(nvml, gpus, out.append, sample_every_s=30.0, event_wait_ms=0), out


# ---- pure parts ----

@pytest.mark.parametrize("xid", [13, 31, 43, 45, 69, 109])
def test_application_xids_retry(xid: int) -> None:
    assert classify_xid(xid) == "retry"


@pytest.mark.parametrize("xid", [48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140])
def test_hardware_xids_keep_off_the_gpu(xid: int) -> None:
    assert classify_xid(xid) == "hardware"


def test_unknown_xid_and_every_entry_has_a_reason() -> None:
    assert classify_xid(4242) == "unknown"
    assert all(reason for _, reason in XID_ACTIONS.values())


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("", []),
    ("0,2", ["0", "2"]),
    (" 1 , 0 ", ["1", "0"]),
    ("01", ["1"]),
    ("GPU-1234abcd,MIG-GPU-5678/1/0", ["GPU-1234abcd", "MIG-GPU-5678/1/0"]),
    ("-1", []),  # the usual way to hide every GPU
    ("0,-1,2", ["0"]),  # CUDA stops at the first invalid entry
    ("1,,2", ["1"]),
    ("2,foo,3", ["2"]),
    ("0,0,1", ["0"]),
])
def test_parse_visible_devices(value: str | None, expected: list[str] | None) -> None:
    assert parse_visible_devices(value) == expected


# ---- resolving the run's GPUs ----

def test_resolve_by_index_and_by_uuid() -> None:
    nvml = FakeNvml()
    devices, notes = resolve_gpus(nvml, ["1", UUIDS[0]])
    assert [(d.label, d.handle, d.uuid) for d in devices] == [("1", "handle1", UUIDS[1]),
                                                              (UUIDS[0], "handle0", UUIDS[0])]
    assert notes == []
    assert nvml.calls[:2] == ["by_index 1", f"by_uuid {UUIDS[0]}"]


def test_resolve_all_unknown_uuid_and_out_of_range() -> None:
    nvml = FakeNvml()
    devices, notes = resolve_gpus(nvml, ["GPU-5678", "0"])  # an unknown UUID is noted and skipped
    assert [d.label for d in devices] == ["0"] and "GPU GPU-5678: Not Found" in notes
    devices, _ = resolve_gpus(nvml, None)
    assert [d.label for d in devices] == ["0", "1"]
    devices, notes = resolve_gpus(nvml, ["0", "7", "1"])  # an index past the end hides the rest, as in CUDA
    assert [d.label for d in devices] == ["0"]
    assert len(notes) == 1 and "GPU 7" in notes[0]


# ---- events ----

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


# ---- health ----

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


# ---- RealNvml over a stand-in pynvml ----

def test_real_nvml_falls_back_to_older_calls_and_translates_errors() -> None:
    pynvml = pytest.importorskip("pynvml")

    def fails(code: int) -> Any:
        def call(*args: object) -> Any:
            raise pynvml.NVMLError(code)
        return call

    nvml = RealNvml()
    nvml._nv = SimpleNamespace(
        NVMLError=pynvml.NVMLError, NVML_ERROR_FUNCTION_NOT_FOUND=pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        NVML_TEMPERATURE_GPU=0,
        # an older driver: the v3 symbol is missing from libnvidia-ml, v2 answers
        nvmlDeviceGetComputeRunningProcesses_v3=fails(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND),
        nvmlDeviceGetComputeRunningProcesses_v2=lambda h: [SimpleNamespace(pid=7, usedGpuMemory=None)],
        # an older pynvml: no ClocksEventReasons function at all
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 0x8,
        nvmlDeviceGetRetiredPagesPendingStatus=fails(pynvml.NVML_ERROR_NOT_SUPPORTED),
        nvmlEventSetWait_v2=fails(pynvml.NVML_ERROR_TIMEOUT),
        nvmlDeviceGetTemperature=fails(pynvml.NVML_ERROR_GPU_IS_LOST),
    )
    assert nvml.compute_processes("h") == [(7, None)]
    assert nvml.throttle_reasons("h") == 0x8
    for call, kind in ((lambda: nvml.retired_pages_pending("h"), "not_supported"),
                       (lambda: nvml.event_wait("set", 10), "timeout"),
                       (lambda: nvml.temperature("h"), "gpu_lost"),
                       (lambda: nvml.remapped_rows("h"), "not_supported")):  # absent from this "pynvml"
        with pytest.raises(NvmlError) as caught:
            call()
        assert caught.value.kind == kind


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


# ---- create_monitor ----

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


# ---- memory release before a relaunch ----

def test_memory_released_after_two_polls() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    nvml.procs["handle0"] = [[(100, 1 << 30), (555, 1 << 20)], [(100, 1 << 30)], [(555, 1 << 20)]]
    assert wait_memory_released(nvml, ["0", "1"], {100, 101}, 30.0, clock, clock.sleep) == []
    assert clock.sleeps == [0.5, 0.5]  # pid 555 belongs to someone else and is not waited for


def test_memory_still_held_at_the_deadline() -> None:
    nvml, clock = FakeNvml(), FakeClock()
    nvml.procs["handle1"] = [[(101, None), (100, 1 << 30)]]
    assert wait_memory_released(nvml, ["1"], {100, 101}, 2.0, clock, clock.sleep) == [100, 101]
    assert sum(clock.sleeps) == pytest.approx(2.0) and clock.now == pytest.approx(2.0)
    assert wait_memory_released(nvml, ["1"], set(), 2.0, clock, clock.sleep) == []


# ---- the thread ----

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

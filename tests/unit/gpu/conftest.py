"""A fake NVML and a fake clock for the GPU tests (no GPU needed)."""

from __future__ import annotations

import threading
from typing import Any

from supervisor.gpu.monitor import GpuMonitor
from supervisor.gpu.nvml import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    NvmlError,
    NvmlEvent,
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

    def memory_total(self, handle: object) -> int:
        return 80 * 2**30  # an H100

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

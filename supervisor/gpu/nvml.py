"""The seam over NVML: the calls the monitor makes, the real pynvml behind them, and the GPUs of a run."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


def parse_visible_devices(value: str | None) -> list[str] | None:
    """The GPUs CUDA_VISIBLE_DEVICES names: None = all, [] = none; parsing stops at the first invalid entry, as CUDA."""
    if value is None:
        return None
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.isdigit():
            entry = str(int(entry))  # "01" is device 1 to CUDA
        elif not entry.startswith(("GPU-", "MIG-")):
            break  # "", "-1", "foo": CUDA hides this entry and every one after it
        if entry in entries:
            break  # a device named twice is invalid to CUDA too
        entries.append(entry)
    return entries



# NVML's ABI constants (nvml.h), repeated here so the monitor and its fakes need no pynvml.
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_XID_CRITICAL = 0x8
THROTTLE_BITS = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                 0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
                 0x80: "hw_power_brake", 0x100: "display_clocks", 0x200: "board_limit", 0x400: "reliability"}
BAD_THROTTLE = 0x8 | 0x40 | 0x80  # hardware-forced slowdowns: the run gets slow for a physical reason
RECOVERY_ACTIONS = {0: "none", 1: "gpu_reset", 2: "node_reboot", 3: "drain_p2p", 4: "drain_and_reset",
                    5: "recover_imex_domain", 6: "bus_reset", 7: "system_reboot"}


class NvmlError(Exception):
    """An NVML call failed; kind is timeout, not_supported, gpu_lost, no_driver or error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class NvmlEvent(NamedTuple):
    """One event from an event set: the GPU's UUID (None if unreadable), NVML's event type bit and its data."""

    uuid: str | None
    event_type: int
    data: int


class Nvml(Protocol):
    """The NVML calls the monitor makes; every one raises NvmlError on failure."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def handle_by_index(self, index: int) -> object: ...
    def handle_by_uuid(self, uuid: str) -> object: ...
    def name(self, handle: object) -> str: ...
    def uuid(self, handle: object) -> str: ...
    def event_set_create(self) -> object: ...
    def supported_event_types(self, handle: object) -> int: ...
    def register_events(self, handle: object, event_types: int, event_set: object) -> None: ...
    def event_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent: ...
    def event_set_free(self, event_set: object) -> None: ...
    def temperature(self, handle: object) -> int: ...
    def throttle_reasons(self, handle: object) -> int: ...
    def retired_pages_pending(self, handle: object) -> bool: ...
    def remapped_rows(self, handle: object) -> tuple[int, int, bool, bool]: ...
    def recovery_action(self, handle: object) -> int: ...
    def compute_processes(self, handle: object) -> list[tuple[int, int | None]]: ...
    def memory_total(self, handle: object) -> int: ...


class RealNvml:
    """Nvml over pynvml (nvidia-ml-py), imported on first use so the daemon loads nothing it does not need."""

    def __init__(self) -> None:
        try:
            self._nv: Any = importlib.import_module("pynvml")
        except ImportError as exc:
            raise NvmlError("no_driver", f"pynvml is not installed ({exc})") from exc
        nv = self._nv
        self._kinds = {nv.NVML_ERROR_TIMEOUT: "timeout", nv.NVML_ERROR_NOT_SUPPORTED: "not_supported",
                       nv.NVML_ERROR_FUNCTION_NOT_FOUND: "not_supported", nv.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
                       nv.NVML_ERROR_LIBRARY_NOT_FOUND: "no_driver", nv.NVML_ERROR_DRIVER_NOT_LOADED: "no_driver"}

    def _call(self, names: str | tuple[str, ...], *args: Any) -> Any:
        """Call the first of the named pynvml functions (newest first) that this pynvml and driver have."""
        error = NvmlError("not_supported", f"neither this pynvml nor the driver has {names}")
        for name in (names,) if isinstance(names, str) else names:
            fn = getattr(self._nv, name, None)
            if fn is None:
                continue  # an older pynvml
            try:
                return fn(*args)
            except self._nv.NVMLError as exc:
                code = getattr(exc, "value", None)
                error = NvmlError(self._kinds.get(code, "error"), f"{name}: {exc}")
                if code != self._nv.NVML_ERROR_FUNCTION_NOT_FOUND:  # not found: an older driver, try the next
                    raise error from exc
        raise error

    def init(self) -> None:
        self._call("nvmlInit")

    def shutdown(self) -> None:
        self._call("nvmlShutdown")

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle_by_index(self, index: int) -> object:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def handle_by_uuid(self, uuid: str) -> object:
        handle = self._call("nvmlDeviceGetHandleByUUID", uuid)
        try:  # a MIG slice: events and ECC/health live on the whole GPU
            if self._call("nvmlDeviceIsMigDeviceHandle", handle):
                handle = self._call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        except NvmlError:
            pass
        return handle

    def name(self, handle: object) -> str:
        return _text(self._call("nvmlDeviceGetName", handle))

    def uuid(self, handle: object) -> str:
        return _text(self._call("nvmlDeviceGetUUID", handle))

    def event_set_create(self) -> object:
        return self._call("nvmlEventSetCreate")

    def supported_event_types(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetSupportedEventTypes", handle))

    def register_events(self, handle: object, event_types: int, event_set: object) -> None:
        self._call("nvmlDeviceRegisterEvents", handle, event_types, event_set)

    def event_wait(self, event_set: object, timeout_ms: int) -> NvmlEvent:
        data = self._call(("nvmlEventSetWait_v2", "nvmlEventSetWait"), event_set, timeout_ms)
        try:
            uuid: str | None = self.uuid(data.device)
        except NvmlError:
            uuid = None
        return NvmlEvent(uuid, int(data.eventType), int(data.eventData))

    def event_set_free(self, event_set: object) -> None:
        self._call("nvmlEventSetFree", event_set)

    def temperature(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetTemperature", handle, self._nv.NVML_TEMPERATURE_GPU))

    def throttle_reasons(self, handle: object) -> int:
        return int(self._call(("nvmlDeviceGetCurrentClocksEventReasons",
                               "nvmlDeviceGetCurrentClocksThrottleReasons"), handle))

    def retired_pages_pending(self, handle: object) -> bool:
        return bool(self._call("nvmlDeviceGetRetiredPagesPendingStatus", handle))

    def remapped_rows(self, handle: object) -> tuple[int, int, bool, bool]:
        corrected, uncorrected, pending, failure = self._call("nvmlDeviceGetRemappedRows", handle)
        return int(corrected), int(uncorrected), bool(pending), bool(failure)

    def recovery_action(self, handle: object) -> int:
        field_id = getattr(self._nv, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
        if field_id is None:
            raise NvmlError("not_supported", "this pynvml has no NVML_FI_DEV_GET_GPU_RECOVERY_ACTION")
        value = self._call("nvmlDeviceGetFieldValues", handle, [field_id])[0]
        if value.nvmlReturn != 0:  # the field is per value: an old driver answers NOT_SUPPORTED here
            raise NvmlError("not_supported", f"recovery action field: NVML return {value.nvmlReturn}")
        member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
        return int(getattr(value.value, member.get(value.valueType, "uiVal")))

    def memory_total(self, handle: object) -> int:
        return int(self._call("nvmlDeviceGetMemoryInfo", handle).total)

    def compute_processes(self, handle: object) -> list[tuple[int, int | None]]:
        procs = self._call(("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
                            "nvmlDeviceGetComputeRunningProcesses"), handle)
        return [(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)) for p in procs]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # pynvml < 11.5 returns bytes


@dataclass(frozen=True)
class GpuDevice:
    """A GPU of the run: the entry naming it (CUDA_VISIBLE_DEVICES or an NVML index), its handle, name and UUID."""

    label: str
    handle: object = field(repr=False, compare=False)
    name: str
    uuid: str


def resolve_gpus(nvml: Nvml, entries: list[str] | None) -> tuple[list[GpuDevice], list[str]]:
    """The run's GPUs as NVML handles, and a note for each entry that could not be resolved."""
    notes: list[str] = []
    try:
        count = nvml.device_count()
    except NvmlError as exc:
        return [], [f"cannot count GPUs: {exc}"]
    wanted = [str(i) for i in range(count)] if entries is None else entries
    devices: list[GpuDevice] = []
    for entry in wanted:
        try:
            # NVML indexes GPUs by PCI bus id, as CUDA does with CUDA_DEVICE_ORDER=PCI_BUS_ID; on identical GPUs
            # CUDA's default "fastest first" order is the same.
            # (CUDA also takes a unique prefix of a UUID, NVML only a whole one: a prefix ends up in the notes)
            handle = nvml.handle_by_index(int(entry)) if entry.isdigit() else nvml.handle_by_uuid(entry)
        except NvmlError as exc:
            notes.append(f"GPU {entry}: {exc}")
            if entry.isdigit():
                break  # CUDA hides an out-of-range index and everything after it
            continue
        uuid = _safe(nvml.uuid, handle, "?")
        if uuid != "?" and any(d.uuid == uuid for d in devices):
            continue  # two MIG slices of one GPU: watch the GPU once
        devices.append(GpuDevice(entry, handle, _safe(nvml.name, handle, "?"), uuid))
    return devices, notes


def _safe(fn: Callable[[object], str], handle: object, default: str) -> str:
    try:
        return fn(handle)
    except NvmlError:
        return default




def cuda_problem(visible: str | None, nvml_factory: Callable[[], Nvml] = RealNvml) -> str | None:
    """Why `device: cuda` cannot train here, in words, or None: no NVIDIA driver (NVML does not load or has no
    GPU), or CUDA_VISIBLE_DEVICES hides every GPU. torch says the same only once the trainer started ("Found no
    NVIDIA driver on your system"), after minutes of imports and a retry loop."""
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU from the trainer"
    try:
        nvml = nvml_factory()
        nvml.init()
        try:
            count = nvml.device_count()
        finally:
            with contextlib.suppress(NvmlError):
                nvml.shutdown()
    except NvmlError as exc:
        return f"no NVIDIA driver could be loaded on this machine (NVML: {exc})"
    if count == 0:
        return "the NVIDIA driver sees no GPU on this machine"
    return None

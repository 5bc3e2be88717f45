"""GPU health: NVML Xid/ECC events and sampled health of the run's GPUs, turned into queue events for the runner."""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

log = logging.getLogger(__name__)

XidAction = Literal["retry", "hardware", "unknown"]

# What to do after an Xid, from NVIDIA's Xid catalog ("Analyzing Xid Errors with the Xid Catalog",
# docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html: its "Resolution Bucket (Immediate Action)" column,
# RESTART_APP -> retry; RESET_GPU / RESTART_BM / CONTACT_SUPPORT for a hardware cause -> hardware) and the dynamic
# page retirement / row remapping guides. "hardware" means: do not relaunch on that GPU until someone looks at it.
XID_ACTIONS: dict[int, tuple[Literal["retry", "hardware"], str]] = {
    13: ("retry", "graphics engine exception (often an out-of-range access in the application)"),
    31: ("retry", "GPU memory page fault (often an illegal address in the application)"),
    43: ("retry", "GPU stopped processing (the application's channel was reset)"),
    45: ("retry", "preemptive cleanup after an earlier error or a killed process"),
    69: ("retry", "graphics engine class error"),
    109: ("retry", "context switch timeout"),
    48: ("hardware", "double-bit ECC error (uncorrectable memory error)"),
    63: ("hardware", "ECC page retirement or row remapping event (reset the GPU to activate it)"),
    64: ("hardware", "ECC page retirement or row remapping failure"),
    74: ("hardware", "NVLink error"),
    79: ("hardware", "GPU has fallen off the bus"),
    92: ("hardware", "high single-bit ECC error rate"),
    94: ("hardware", "contained ECC error"),
    95: ("hardware", "uncontained ECC error"),
    119: ("hardware", "GSP RPC timeout"),
    120: ("hardware", "GSP error"),
    140: ("hardware", "unrecovered ECC error"),
    154: ("hardware", "GPU recovery action changed (the driver asks for a reset or reboot)"),
}


def classify_xid(xid: int) -> XidAction:
    """Whether an Xid calls for an ordinary relaunch, for keeping off the GPU, or is not in the table."""
    entry = XID_ACTIONS.get(xid)
    return entry[0] if entry else "unknown"


def describe_xid(xid: int) -> str:
    """'Xid 79 (GPU has fallen off the bus)', for messages."""
    entry = XID_ACTIONS.get(xid)
    return f"Xid {xid} ({entry[1]})" if entry else f"Xid {xid} (not in the supervisor's table)"


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


# ---- the seam over NVML ----

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


# ---- what the monitor puts on the queue ----

@dataclass(frozen=True)
class GpuFault:
    """An NVML event: an Xid or a double-bit ECC error; hardware=True means do not relaunch on this GPU."""

    gpu: str
    xid: int | None
    kind: str
    hardware: bool
    message: str


@dataclass(frozen=True)
class GpuHealth:
    """A changed health reading of one GPU: what is wrong (empty: recovered), the raw fields, hardware if fatal."""

    gpu: str
    problems: list[str]
    fields: dict[str, object]
    hardware: bool = False


class GpuMonitor:
    """Watches the run's GPUs from one daemon thread: NVML events as they come, health every sample_every_s."""

    def __init__(self, nvml: Nvml, gpus: list[str] | None, put: Callable[[object], None], sample_every_s: float = 30.0,
                 event_wait_ms: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml
        self.devices, self.notes = resolve_gpus(nvml, gpus)
        self.gpus = [d.label for d in self.devices]
        self.put = put
        self.sample_every_s = sample_every_s
        self.event_wait_ms = event_wait_ms
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: object | None = None
        self._opened = self._closed = False
        self._next_sample = float("-inf")  # the first run_once samples: a GPU already in trouble is news
        self._last: dict[str, tuple[tuple[str, ...], bool]] = {}
        self._unsupported: set[tuple[str, str]] = set()

    def start(self) -> None:
        """Start the one watcher thread (a daemon: it must never keep the supervisor from exiting)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread (within one event wait) and release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.event_wait_ms / 1000 + 5)
            if self._thread.is_alive():
                log.warning("GPU monitor thread did not stop; leaving NVML open")
                return  # freeing an event set another thread waits on is undefined behaviour in NVML
        self.close()

    def close(self) -> None:
        """Free the event set and shut NVML down (once); a failure here changes nothing for the run."""
        if not self._closed:
            self._closed = True
            self._free_events()
            with contextlib.suppress(NvmlError):
                self.nvml.shutdown()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.run_once(self.clock())
        except Exception:  # a bug here must cost the GPU watch, never the supervisor
            log.exception("GPU monitor failed; GPU faults are no longer watched")

    def run_once(self, now: float) -> None:
        """One turn of the loop: sample health if due, then wait up to event_wait_ms for one NVML event."""
        if not self._opened:
            self._opened = True
            self._open_events()
        if now >= self._next_sample:
            self._next_sample = now + self.sample_every_s
            for dev in self.devices:
                self._report(dev, *self.sample(dev))
        if self._event_set is None:
            self._stop.wait(self.event_wait_ms / 1000)  # no events to wait on: keep the sampling cadence
            return
        try:
            event = self.nvml.event_wait(self._event_set, self.event_wait_ms)
        except NvmlError as exc:
            if exc.kind == "timeout":
                return
            # a lost GPU or a broken event set fails every wait at once: stop waiting, let sampling tell which GPU
            log.warning("GPU monitor: waiting for NVML events failed (%s); sampling only from now on", exc)
            self._free_events()
            self._next_sample = now
            return
        fault = self._fault(event)
        if fault is not None:
            self.put(fault)

    def _open_events(self) -> None:
        try:
            self._event_set = self.nvml.event_set_create()
        except NvmlError as exc:
            log.info("GPU monitor: no NVML events (%s); sampling health only", exc)
            return
        registered = 0
        for dev in self.devices:
            try:
                # registering an unsupported type fails the whole call, so ask first
                types = self.nvml.supported_event_types(dev.handle) & (EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC)
                if types:
                    self.nvml.register_events(dev.handle, types, self._event_set)
                    registered += 1
            except NvmlError as exc:
                log.info("GPU monitor: no NVML events for GPU %s (%s)", dev.label, exc)
        if not registered:
            self._free_events()

    def _free_events(self) -> None:
        event_set, self._event_set = self._event_set, None
        if event_set is not None:
            try:
                self.nvml.event_set_free(event_set)
            except NvmlError as exc:  # a lost GPU can fail this too; the set is dropped either way
                log.debug("GPU monitor: freeing the event set failed: %s", exc)

    def _fault(self, event: NvmlEvent) -> GpuFault | None:
        dev = next((d for d in self.devices if d.uuid == event.uuid), None)
        if dev is None and len(self.devices) == 1:
            dev = self.devices[0]
        gpu = dev.label if dev else (event.uuid or "?")
        if event.event_type & EVENT_XID_CRITICAL:
            xid = event.data
            action = classify_xid(xid)
            advice = {"retry": "a relaunch may help", "hardware": "do not relaunch on this GPU",
                      "unknown": "treated as retryable"}[action]
            return GpuFault(gpu, xid, "xid", action == "hardware", f"GPU {gpu}: {describe_xid(xid)}; {advice}")
        if event.event_type & EVENT_DOUBLE_BIT_ECC:
            return GpuFault(gpu, None, "double_bit_ecc", True,
                            f"GPU {gpu}: double-bit ECC error (uncorrectable); do not relaunch on this GPU")
        return None

    def sample(self, dev: GpuDevice) -> tuple[list[str], dict[str, object], bool]:
        """One health reading: (problems, fields, hardware); every metric the GPU does not support is skipped."""
        problems: list[str] = []
        fields: dict[str, object] = {"name": dev.name, "uuid": dev.uuid}
        hardware = False
        try:
            temp = self._read(dev, "temperature", self.nvml.temperature)
            if temp is not None:
                fields["temperature_c"] = temp
            reasons = self._read(dev, "throttle", self.nvml.throttle_reasons)
            if reasons is not None:
                fields["throttle_reasons"] = decode_throttle(reasons)
                if reasons & BAD_THROTTLE:
                    problems.append("clocks slowed by hardware: " + ", ".join(decode_throttle(reasons & BAD_THROTTLE)))
            pages_pending = self._read(dev, "retired_pages", self.nvml.retired_pages_pending)
            if pages_pending is not None:
                fields["retired_pages_pending"] = pages_pending
            if pages_pending:
                problems.append("retired memory pages pending: a GPU reset is needed to retire them")
            rows = self._read(dev, "remapped_rows", self.nvml.remapped_rows)
            if rows is not None:
                fields["remapped_rows"] = dict(zip(("corrected", "uncorrected", "pending", "failure"), rows,
                                                   strict=True))
                if rows[2]:
                    problems.append("row remapping pending: a GPU reset is needed to activate it")
                if rows[3]:
                    problems.append("row remapping failed: the GPU needs service")
                    hardware = True
            action = self._read(dev, "recovery_action", self.nvml.recovery_action)
            if action is not None:
                fields["recovery_action"] = RECOVERY_ACTIONS.get(action, str(action))
                if action != 0:
                    problems.append(f"the driver asks for recovery action {fields['recovery_action']}")
                    hardware = True
        except NvmlError as exc:  # only gpu_lost gets here
            problems.append(f"GPU is lost ({exc}); fallen off the bus?")
            hardware = True
        return problems, fields, hardware

    def _read(self, dev: GpuDevice, metric: str, call: Callable[[object], Any]) -> Any:
        if (dev.label, metric) in self._unsupported:
            return None
        try:
            return call(dev.handle)
        except NvmlError as exc:
            if exc.kind == "gpu_lost":
                raise
            if exc.kind == "not_supported":
                self._unsupported.add((dev.label, metric))  # will not change while the driver is loaded
            log.debug("GPU %s: %s not read: %s", dev.label, metric, exc)
            return None

    def _report(self, dev: GpuDevice, problems: list[str], fields: dict[str, object], hardware: bool) -> None:
        # only changes are news: a throttle that lasts an hour is one record, and its end is another
        key = (tuple(problems), hardware)
        if key != self._last.get(dev.label, ((), False)):
            self._last[dev.label] = key
            self.put(GpuHealth(dev.label, problems, fields, hardware))


def decode_throttle(mask: int) -> list[str]:
    """NVML's clock event (throttle) reason bits as names."""
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit]


def create_monitor(device: str, visible: str | None, put: Callable[[object], None],
                   nvml_factory: Callable[[], Nvml] = RealNvml) -> tuple[GpuMonitor | None, str]:
    """A monitor for the run's GPUs and an info line, or None and the reason there is nothing to watch."""
    if device != "cuda":
        return None, f"GPU monitor: off (device {device})"
    entries = parse_visible_devices(visible)
    if entries == []:
        return None, f"GPU monitor: off (CUDA_VISIBLE_DEVICES={visible!r} shows no GPU)"
    try:
        nvml = nvml_factory()
        nvml.init()
    except Exception as exc:  # no driver, no library, a broken install: training may still run, just unwatched
        return None, f"GPU monitor: off (NVML unavailable: {exc}; no NVIDIA driver?)"
    try:
        monitor = GpuMonitor(nvml, entries, put)
    except Exception as exc:  # a driver answering nonsense must not stop the training from starting
        log.debug("GPU monitor: resolving GPUs failed", exc_info=True)
        with contextlib.suppress(Exception):
            nvml.shutdown()
        return None, f"GPU monitor: off (resolving the GPUs failed: {exc!r})"
    notes = "; ".join(monitor.notes)
    if not monitor.devices:
        monitor.close()
        return None, "GPU monitor: off (no GPU found" + (f": {notes})" if notes else ")")
    watched = ", ".join(f"GPU {d.label} ({d.name}, {d.uuid})" if d.label.isdigit() else f"{d.label} ({d.name})"
                        for d in monitor.devices)
    return monitor, f"GPU monitor: watching {watched}" + (f" (not watched: {notes})" if notes else "")


def wait_memory_released(nvml: Nvml, gpus: list[str], pids: set[int], timeout_s: float,
                         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep,
                         poll_s: float = 0.5) -> list[int]:
    """Wait until none of pids holds memory on the GPUs; the pids still holding it at the deadline ([] = released).

    NVML reports host pids: in a container with its own pid namespace they do not match and this returns at once.
    """
    devices, _ = resolve_gpus(nvml, gpus)
    deadline = clock() + timeout_s
    while True:
        held: set[int] = set()
        for dev in devices:
            try:
                held.update(pid for pid, _ in nvml.compute_processes(dev.handle) if pid in pids)
            except NvmlError as exc:  # cannot tell: do not hold the relaunch back for a metric we cannot read
                log.debug("GPU %s: compute processes not read: %s", dev.label, exc)
        now = clock()
        if not held or now >= deadline:
            return sorted(held)
        sleep(min(poll_s, deadline - now))

"""GPU health: NVML Xid/ECC events and sampled health of the run's GPUs, turned into queue items for the runner."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.core.messages import Abort, Record
from supervisor.gpu.nvml import (
    BAD_THROTTLE,
    EVENT_DOUBLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    RECOVERY_ACTIONS,
    THROTTLE_BITS,
    GpuDevice,
    Nvml,
    NvmlError,
    NvmlEvent,
    RealNvml,
    parse_visible_devices,
    resolve_gpus,
)
from supervisor.gpu.xid import classify_xid, describe_xid

log = logging.getLogger(__name__)


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


def gpu_outcome(report: GpuFault | GpuHealth) -> tuple[list[Record], Abort | None]:
    """What the run does about a GPU report: record it; a hardware-class fault ends the run (exit 1: relaunching on a
    broken GPU repeats the failure; under SLURM the job can go elsewhere). Anything else leaves it to the trainer's
    own exit."""
    if isinstance(report, GpuFault):
        records = [Record("gpu_fault", {"gpu": report.gpu, "xid": report.xid, "kind": report.kind,
                                        "hardware": report.hardware, "message": report.message})]
        log.warning("GPU %s: %s", report.gpu, report.message)
        what = report.message
    else:
        what = "; ".join(report.problems)
        records = [Record("gpu_health", {"gpu": report.gpu, "problems": report.problems, "hardware": report.hardware})]
        log.warning("GPU %s health: %s", report.gpu, what or "recovered")
        if report.hardware:
            records.append(Record("gpu_fault", {"gpu": report.gpu, "xid": None, "kind": "health", "hardware": True,
                                                "message": what}))
    if not report.hardware:
        return records, None
    return records, Abort("gpu_fault", f"GPU {report.gpu} has a hardware-class fault ({what}): not relaunching on it; "
                                       "have the GPU checked (nvidia-smi -q), or run elsewhere")


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


def monitor_for_run(device: str, visible: str | None, num_gpus: int,
                    put: Callable[[object], None]) -> tuple[GpuMonitor | None, str]:
    """The monitor for one run's GPUs: CUDA_VISIBLE_DEVICES (the run's env, else ours), or GPU 0 when it is unset and
    the run trains on one GPU (nnU-Net then uses cuda:0 alone: other GPUs' faults are not this run's)."""
    if visible is None and num_gpus == 1:
        visible = "0"
    return create_monitor(device, visible, put)


def wait_memory_released(nvml: Nvml, gpus: list[str], pids: set[int], timeout_s: float,
                         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep,
                         poll_s: float = 0.5) -> list[int]:
    """Wait until none of pids holds memory on the GPUs; the pids still holding it at the deadline ([] = released).

    NVML reports host pids: in a container with its own pid namespace they do not match and this returns at once.
    """
    devices, _ = resolve_gpus(nvml, gpus)
    start = clock()
    deadline = start + timeout_s
    waited = False
    while True:
        held: set[int] = set()
        for dev in devices:
            try:
                held.update(pid for pid, _ in nvml.compute_processes(dev.handle) if pid in pids)
            except NvmlError as exc:  # cannot tell: do not hold the relaunch back for a metric we cannot read
                log.debug("GPU %s: compute processes not read: %s", dev.label, exc)
        now = clock()
        if not held or now >= deadline:
            if waited and not held:  # said when the wait began: a relaunch held back is never silent
                log.info("the previous attempt's GPU memory is free after %.1f s", now - start)
            return sorted(held)
        if not waited:
            log.info("waiting up to %.0f s for pids %s to free their GPU memory before the relaunch", timeout_s,
                     sorted(held))
            waited = True
        sleep(min(poll_s, deadline - now))

"""One look at this machine's GPUs through the supervisor's NVML seam; run it once on a GPU machine (a few seconds).

    .venv/bin/python bench/gpu_probe.py

Prints the monitor's info line, every health field each GPU answers (or why not), the time of one health sample,
whether Xid + double-bit ECC events can be registered (then waits 2 s on them), and how long stop() takes.
Without a driver it says so and exits 0.
"""

from __future__ import annotations

import os
import time

from supervisor.gpu.monitor import create_monitor, decode_throttle
from supervisor.gpu.nvml import EVENT_DOUBLE_BIT_ECC, EVENT_XID_CRITICAL, NvmlError

METRICS = ("temperature", "throttle_reasons", "retired_pages_pending", "remapped_rows", "recovery_action",
           "compute_processes")


def main() -> int:
    put: list[object] = []
    monitor, line = create_monitor("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"), put.append)
    print(line)
    if monitor is None:
        print("no NVIDIA driver or no visible GPU here: nothing to probe")
        return 0
    nvml = monitor.nvml
    for dev in monitor.devices:
        print(f"GPU {dev.label}: name={dev.name!r} uuid={dev.uuid}")
        for metric in METRICS:
            try:
                value: object = getattr(nvml, metric)(dev.handle)
            except NvmlError as exc:
                value = f"unavailable ({exc.kind}: {exc})"
            if metric == "throttle_reasons" and isinstance(value, int):
                value = f"{value:#x} {decode_throttle(value)}"
            print(f"  {metric}: {value}")
        started = time.perf_counter()
        problems, fields, hardware = monitor.sample(dev)
        print(f"  one health sample: {(time.perf_counter() - started) * 1000:.2f} ms; problems={problems} "
              f"hardware={hardware} fields={fields}")
    try:
        event_set = nvml.event_set_create()
    except NvmlError as exc:
        event_set = None
        print(f"events: no event set ({exc.kind}: {exc})")
    if event_set is not None:
        try:
            for dev in monitor.devices:
                supported = nvml.supported_event_types(dev.handle)
                wanted = supported & (EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC)
                nvml.register_events(dev.handle, wanted, event_set)
                print(f"GPU {dev.label}: events supported {supported:#x}, registered {wanted:#x}")
            started = time.perf_counter()
            try:
                print(f"event: {nvml.event_wait(event_set, 2000)}")
            except NvmlError as exc:
                print(f"event wait: {exc.kind} ({exc})")
            print(f"event wait returned after {time.perf_counter() - started:.2f} s (asked for 2 s)")
        except NvmlError as exc:
            print(f"events: cannot register ({exc.kind}: {exc})")
        finally:
            nvml.event_set_free(event_set)
    monitor.start()  # the real thread: one sample, then blocking waits of 1 s
    started = time.perf_counter()
    monitor.stop()
    print(f"monitor thread stopped in {time.perf_counter() - started:.2f} s; it put {put}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

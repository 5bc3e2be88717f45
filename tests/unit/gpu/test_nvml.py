"""The NVML seam: CUDA_VISIBLE_DEVICES, resolving GPUs, the real pynvml behind a stand-in."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.gpu.nvml import (
    NvmlError,
    RealNvml,
    parse_visible_devices,
    resolve_gpus,
)
from tests.unit.gpu.conftest import UUIDS, FakeNvml


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

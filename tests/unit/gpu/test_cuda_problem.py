"""`device: cuda` where no GPU can train: said by `check` before a launch, not by torch after minutes of retries."""

from __future__ import annotations

from supervisor.gpu.nvml import NvmlError, cuda_problem


class NoDriver:
    def init(self) -> None:
        raise NvmlError("no_driver", "nvmlInit: NVML Shared Library Not Found")


class Gpus:
    def __init__(self, count: int) -> None:
        self.count, self.shut = count, False

    def init(self) -> None:
        pass

    def device_count(self) -> int:
        return self.count

    def shutdown(self) -> None:
        self.shut = True


def test_no_driver_no_gpu_and_hidden_gpus_are_each_named() -> None:
    assert "no NVIDIA driver" in str(cuda_problem(None, NoDriver))  # type: ignore[arg-type]
    assert "sees no GPU" in str(cuda_problem(None, lambda: Gpus(0)))  # type: ignore[arg-type,return-value]
    assert "empty" in str(cuda_problem("", lambda: Gpus(1)))  # type: ignore[arg-type,return-value]
    one = Gpus(1)
    assert cuda_problem("0", lambda: one) is None and one.shut  # type: ignore[arg-type,return-value]


def test_this_machine_without_an_nvidia_driver_is_told_so() -> None:
    # the test machines have no GPU; where one has, the real NVML must find it
    import os

    found = os.path.exists("/proc/driver/nvidia/version")
    problem = cuda_problem(None)
    assert (problem is None) == found, problem

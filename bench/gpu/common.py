"""What the parts of scripts/gpu-check.sh share: the carried dataset copied into a work folder, waits, a GPU memory
sampler through the supervisor's own NVML seam, and a cleanup that leaves no trainer of the check running.

Run by the check's Python (the GPU machine's python3 with the carried wheels on PYTHONPATH, or .venv here).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TRAINERS = Path(__file__).resolve().parent / "trainers"
TRAINER = "nnUNetTrainer_GpuCheck"
DATASET = "Dataset901_Tiny"


class CheckFailed(Exception):
    """A step of a part did not do what it must; the part's verdict says this message."""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def copy_dataset(data: Path, work: Path) -> tuple[Path, Path]:
    """The carried preprocessed dataset copied into work/ (nnU-Net writes splits_final.json into it); returns
    (nnUNet_preprocessed, nnUNet_results)."""
    src = data / "nnUNet_preprocessed" / DATASET
    if not (src / "nnUNetPlans.json").is_file():
        raise CheckFailed(f"no preprocessed dataset at {src}: run scripts/gpu-wheels.sh first and carry .gpu-carry")
    pre, res = work / "nnUNet_preprocessed", work / "nnUNet_results"
    shutil.rmtree(pre, ignore_errors=True)
    shutil.copytree(src, pre / DATASET)
    res.mkdir(parents=True, exist_ok=True)
    return pre, res


def trainer_env(**extra: str) -> dict[str, str]:
    env = {"nnUNet_n_proc_DA": "2", "nnUNet_def_n_proc": "1",
           # torch.compile on CUDA costs tens of seconds an attempt and is not what is checked; GPU_CHECK_COMPILE=1
           "nnUNet_compile": "t" if os.environ.get("GPU_CHECK_COMPILE") == "1" else "f"}
    env.update(extra)
    return env


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1,
             alive: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            value = cond()
            if value:
                return value
            raise CheckFailed(f"waiting for {what}: the supervisor exited with {alive.returncode} first")
        time.sleep(interval_s)
    raise CheckFailed(f"waiting for {what}: not within {timeout_s:.0f} s")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def events(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def start_supervisor(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)


def run_cli(args: list[str], log: Path, timeout_s: float) -> int:
    with open(log, "ab") as out:
        try:
            return subprocess.run([sys.executable, "-m", "supervisor", *args], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=REPO, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            return -1


class GpuSampler:
    """Polls NVML's compute processes (pid -> bytes) every interval: each pid's peak, when each pid was last seen,
    and samples where several pids held memory at once. Off (enabled False) without a driver or on the CPU."""

    def __init__(self, device: str, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peaks: dict[int, int] = {}
        self.first_seen: dict[int, float] = {}
        self.last_seen: dict[int, float] = {}
        self.together = 0  # samples with two or more pids holding memory
        self.max_together = 0
        self.samples = 0
        self.note = ""
        self.nvml: Any = None
        self.handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device != "cuda":
            self.note = "device is not cuda: no GPU sampling"
            return
        try:
            from supervisor.gpu.nvml import RealNvml, resolve_gpus
            self.nvml = RealNvml()
            self.nvml.init()
            devices, notes = resolve_gpus(self.nvml, None)
            self.handles = [d.handle for d in devices]
            self.note = f"NVML: {len(devices)} GPU(s) {'; '.join(notes)}".strip()
        except Exception as exc:  # the part reports it; it does not crash the check
            self.nvml, self.note = None, f"NVML unavailable: {exc}"

    @property
    def enabled(self) -> bool:
        return self.nvml is not None and bool(self.handles)

    def sample(self) -> dict[int, int]:
        now = time.time()
        seen: dict[int, int] = {}
        for h in self.handles:
            with contextlib.suppress(Exception):
                for pid, used in self.nvml.compute_processes(h):
                    seen[pid] = seen.get(pid, 0) + int(used or 0)
        for pid, used in seen.items():
            self.peaks[pid] = max(self.peaks.get(pid, 0), used)
            self.first_seen.setdefault(pid, now)
            self.last_seen[pid] = now
        holding = sum(1 for u in seen.values() if u)
        self.max_together = max(self.max_together, holding)
        self.together += holding >= 2
        self.samples += 1
        return seen

    def holds(self, pid: int) -> bool:
        return pid in self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> GpuSampler:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="gpu-check-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.shutdown()


def mib(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def leftovers(work: Path) -> list[int]:
    """Live processes whose run marker (NNUNET_SUPERVISE_RUN) lies under work/: trainers and their workers."""
    import psutil

    from supervisor.trainer.protocol import MARKER_VAR
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            marker = proc.environ().get(MARKER_VAR, "")
            if marker.startswith(str(work)) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def cleanup(work: Path, sups: list[subprocess.Popen[bytes]]) -> list[int]:
    """Stop what this part started: each live supervisor by SIGTERM (it stops its trainer resumably), then SIGKILL,
    then any trainer process of the part still alive. Returns the pids that had to be killed at the end."""
    for sup in sups:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
    for sup in sups:
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait(5)
    left = leftovers(work)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def on_sigterm_raise() -> None:
    """timeout(1) ends a part with SIGTERM: unwind through the part's finally (cleanup, its JSON)."""
    def handler(signum: int, frame: object) -> None:
        raise CheckFailed(f"the part's time ran out ({signal.Signals(signum).name})")
    signal.signal(signal.SIGTERM, handler)


def finish(result: dict[str, Any], out: Path, part: str) -> int:
    """Write the part's JSON and print its one verdict line; 0 pass, 1 fail."""
    summary = str(result.get("summary", "")).strip()
    result["summary"] = summary.splitlines()[0] if summary else ""
    out.write_text(json.dumps(result, indent=2, default=str))
    verdict = "PASS" if result.get("ok") else "FAIL"
    print(f"VERDICT {part} {verdict}: {result.get('summary', '')}", flush=True)
    return 0 if result.get("ok") else 1

"""Recovery by cause on real nnUNetv2_train (CPU), with real causes: a memory cgroup's OOM killer, a /dev/shm too
small, a torch.compile failure produced by torch itself. Each run gives up or fails forever without the remedy (the
same command fails the same way) and finishes with it.

The trainers in tests/trainers make the causes reachable on a CPU: nnUNetTrainer_Hungry's workers each hold
HUNGRY_MB of memory (on the tiny dataset a worker costs almost nothing), nnUNetTrainer_Compiling compiles on CPU as
nnU-Net does on CUDA.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.context import RunContext
from supervisor.evidence.memory import memory_cgroup
from tests.conftest import events_of

pytestmark = pytest.mark.integration

TRAINERS = Path(__file__).resolve().parents[1] / "trainers"
HUNGRY_MB = 1500
# Measured on the tiny dataset (bench/remedies.py prints it): the tree's peak with nnU-Net's default 2 workers here
# is about the main process + 2 x HUNGRY_MB, with 1 worker + 1 x HUNGRY_MB. The limit sits between the two.
LIMIT_BYTES = int(3.4 * 2**30)


def run_in(config: Path, prefix: list[str], log: Path, timeout_s: float = 900) -> int:
    """`python -m supervisor run CONFIG` under a prefix (a shell that joins a cgroup, a mount namespace)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "supervisor", "run", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


CGROUP_EMPTY_WAIT_S = 30.0  # SIGKILLed processes leave their cgroup only once they have exited (freed memory)
CGROUP_POLL_S = 0.2


def cgroup_pids(folder: Path) -> list[int]:
    """The processes in a cgroup (none once the folder is gone)."""
    try:
        return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def described(pids: list[int]) -> str:
    """pids with their command lines, for a message."""
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid} ({cmd[:80]})")
    return ", ".join(out)


def empty_cgroup(folder: Path, timeout_s: float = CGROUP_EMPTY_WAIT_S) -> list[int]:
    """SIGKILL everything in the cgroup and wait until cgroup.procs is empty: a killed process stays listed until
    it has exited, which takes a while for one that holds gigabytes. The pids still in it at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = cgroup_pids(folder)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:  # again each round: a process may have forked between the read and the kill
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(CGROUP_POLL_S)


def remove_cgroup(folder: Path, tries: int = 10) -> OSError | None:
    """rmdir the (empty) cgroup, again while the kernel still says EBUSY; the last error, None when it is gone."""
    error: OSError | None = None
    for _ in range(tries):
        try:
            folder.rmdir()
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return exc
            error = exc
        time.sleep(CGROUP_POLL_S)
    return error


@contextlib.contextmanager
def limited_cgroup(folder: Path, limit_bytes: int) -> Iterator[Path]:
    """A memory cgroup (v1) at `folder` with memory.limit_in_bytes, emptied and removed after. A folder left by an
    earlier test of this process (the same pid, the same name) is made afresh when nothing is in it; one with live
    processes in it is a failure naming them."""
    if folder.exists():
        left = cgroup_pids(folder)
        if left:
            pytest.fail(f"the memory cgroup {folder} exists with live processes in it (left by an earlier test?): "
                        f"{described(left)}")
        remove_cgroup(folder)  # empty: made afresh; one that cannot be removed is reused, its limit set again below
    try:
        folder.mkdir(exist_ok=True)
        (folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        yield folder
    finally:
        left = empty_cgroup(folder)  # nothing of the test may outlive it
        error = remove_cgroup(folder) if not left else None
        if left:
            pytest.fail(f"processes still in {folder} {CGROUP_EMPTY_WAIT_S:g} s after SIGKILL: {described(left)}")
        if error is not None:
            warnings.warn(f"could not remove the memory cgroup {folder}: {error}", stacklevel=1)


@pytest.fixture
def memory_limited() -> Iterator[Path]:
    """A child of our memory cgroup (v1) for the test, removed after."""
    cg = memory_cgroup(os.getpid())
    if os.geteuid() != 0 or cg is None or not (cg.path / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    with limited_cgroup(cg.path / f"nnunet-supervise-oom-{os.getpid()}", LIMIT_BYTES) as folder:
        yield folder


def hungry(write_config: Any, attempts: int = 3, remedies: dict[str, Any] | None = None, **extra: Any) -> Path:
    # The reactive ladder is what these tests show: the counts fitted before the launch would see the memory limit
    # and prevent the OOM (bench/remedies.py measures that), so they are off here, as when an estimate misses.
    return write_config(nnunet={"trainer": "nnUNetTrainer_Hungry", "trainer_paths": [str(TRAINERS)],
                                "env": {"nnUNet_def_n_proc": "1", "HUNGRY_MB": str(HUNGRY_MB)}},
                        restart={"max_attempts_without_progress": attempts},
                        remedies={"fit_allocation": False, **(remedies or {})}, **extra)


def test_a_worker_killed_by_a_real_memory_limit_halves_the_workers_and_the_run_finishes(
        write_config: Any, memory_limited: Path, tmp_path: Path) -> None:
    config = hungry(write_config)
    ctx = RunContext.load(config)
    join = ["sh", "-c", f'echo $$ > {memory_limited}/cgroup.procs && exec "$@"', "join"]
    assert run_in(config, join, tmp_path / "supervisor.log") == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    evs = events_of(ctx)
    failed = [e for e in evs if e["event"] == "exit" and e["classification"] != "finished"]
    assert failed and failed[0]["cause"] == "host_oom"
    evidence = failed[0]["evidence"]
    assert evidence["oom_kills"] >= 1 and evidence["memory_limit_bytes"] == LIMIT_BYTES // 4096 * 4096  # in pages
    assert any(not k["main"] for k in evidence["killed"])  # the workers first (the main process may follow)
    remedies = [e for e in evs if e["event"] == "remedy"]
    assert remedies[0]["variable"] == "nnUNet_n_proc_DA" and remedies[0]["from"] is None
    assert int(remedies[0]["to"]) < min(12, os.cpu_count() or 1)
    finished = evs[-1]
    assert finished["event"] == "finished" and "nnUNet_n_proc_DA" in finished["remedies"]
    head = ctx.layout.attempt_log(failed[-1]["attempt"] + 1).read_text().splitlines()[1]
    assert head.startswith("# nnunet-supervise remedy in effect: nnUNet_n_proc_DA=")


def test_the_same_run_without_remedies_gives_up(write_config: Any, memory_limited: Path, tmp_path: Path) -> None:
    config = hungry(write_config, attempts=2, remedies={"enabled": False})  # the same failure twice is enough
    join = ["sh", "-c", f'echo $$ > {memory_limited}/cgroup.procs && exec "$@"', "join"]
    assert run_in(config, join, tmp_path / "supervisor.log") == 1
    evs = events_of(RunContext.load(config))
    assert [e["reason"] for e in evs if e["event"] == "give_up"] == ["no_progress"]
    assert {e.get("cause") for e in evs if e["event"] == "exit"} == {"host_oom"}  # seen, not acted on


def test_a_dev_shm_too_small_for_the_workers_is_survived_with_fewer(write_config: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /dev/shm")
    # nnU-Net's default worker count here; torch cannot put their batches into a 256 KiB /dev/shm and the trainer
    # waits for them for ever (it sees live workers): a hang with torch's words in the log
    config = write_config(nnunet={"trainer": "nnUNetTrainer_Short", "trainer_paths": [str(TRAINERS)],
                                  "env": {"nnUNet_def_n_proc": "1"}},
                          restart={"max_attempts_without_progress": 3})
    ctx = RunContext.load(config)
    private_shm = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs /dev/shm && exec "$@"', "shm"]
    assert run_in(config, private_shm, tmp_path / "supervisor.log") == 0, \
        (tmp_path / "supervisor.log").read_text()[-3000:]
    evs = events_of(ctx)
    failed = [e for e in evs if e["event"] == "exit" and e["classification"] != "finished"]
    assert failed and failed[0]["cause"] == "shm_exhausted"
    assert failed[0]["evidence"]["shm_size_bytes"] == 256 * 1024
    remedies = [e for e in evs if e["event"] == "remedy"]
    assert remedies[-1]["variable"] == "nnUNet_n_proc_DA" and remedies[-1]["to"] == "0"
    assert "--shm-size" in remedies[0]["message"]


def test_a_real_torch_compile_failure_turns_compile_off_and_the_run_finishes(write_config: Any,
                                                                           tmp_path: Path) -> None:
    # no working C++ compiler for inductor: torch.compile itself raises InductorError at the first training step
    config = write_config(nnunet={"trainer": "nnUNetTrainer_Compiling", "trainer_paths": [str(TRAINERS)],
                                  "env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
                                          "CXX": "/nonexistent/c++"}})
    ctx = RunContext.load(config)
    assert run_in(config, [], tmp_path / "supervisor.log") == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    evs = events_of(ctx)
    failed = [e for e in evs if e["event"] == "exit" and e["classification"] != "finished"]
    assert [e["cause"] for e in failed] == ["compile_error"]
    assert "InductorError" in failed[0]["summary"]
    remedy = next(e for e in evs if e["event"] == "remedy")
    assert (remedy["variable"], remedy["from"], remedy["to"], remedy["attempt"]) == ("nnUNet_compile", None, "f", 2)

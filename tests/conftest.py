"""Shared fixtures: the tiny real nnU-Net dataset (made once per session) and a run.yaml writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.context import RunContext
from supervisor.core.causes import KernelKill
from supervisor.daemon.process import ProcessOps, TrainerProcess
from supervisor.demo.dataset import make_dataset
from supervisor.demo.runyaml import TRAINERS as DEMO_TRAINERS
from supervisor.demo.runyaml import write_demo_config
from supervisor.evidence.collect import Probes

REPO = Path(__file__).resolve().parents[1]


# ---- a fake trainer for the runner's real-process tests ----

FAKE = Path(__file__).with_name("fake_trainer.py")  # stands in for nnUNetv2_train in the runner tests


def make_ctx(tmp_path: Path, plan: list[dict[str, Any]], heartbeat: dict[str, Any] | None = None,
             power: dict[str, Any] | None = None, cooperative: dict[str, Any] | None = None,
             metrics: dict[str, Any] | None = None, notify: dict[str, Any] | None = None,
             remedies: dict[str, Any] | None = None, nnunet_env: dict[str, str] | None = None,
             **restart: float) -> RunContext:
    """A run of the fake trainer (tests/fake_trainer.py plays `plan`, one entry per attempt) under tmp_path."""
    (tmp_path / "pre" / "Dataset901_Tiny").mkdir(parents=True, exist_ok=True)
    config = write_demo_config(
        tmp_path / "run.yaml", None, Path("pre"), Path("res"),
        nnunet={"trainer": "nnUNetTrainer", "trainer_paths": [],
                "env": {"FAKE_PLAN": json.dumps(plan), **(nnunet_env or {})}},
        restart={"backoff_initial_s": 0.0, **restart}, process={"stop_grace_s": 2}, heartbeat=heartbeat or {},
        power=power or {}, cooperative=cooperative or {}, metrics=metrics or {}, notify=notify or {},
        # the fake trainer's runs do not depend on this machine's CPUs (the sizing has tests of its own)
        remedies={"fit_allocation": False, **(remedies or {})})
    return RunContext.load(config)


def fake_spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> TrainerProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    shim = argv[1:3] == ["-m", "supervisor.trainer.launch"]  # cooperative mode: the fake stands in for the shim too
    return TrainerProcess.spawn([sys.executable, str(FAKE), *argv[3 if shim else 1:]], env, log, cwd)


# ---- the OS behind the runner, faked: no process at all ----

class FakeTrainer:
    """A trainer that exists only in memory. Its files are written when it is spawned; it has then exited with
    its plan's status, or (a hang, a cooperative trainer) it runs until it is signalled."""

    def __init__(self, pid: int, returncode: int | None, cooperative: bool, log: list[str]) -> None:
        self.pid, self.create_time = pid, 1.0
        self.returncode, self.cooperative, self.log = returncode, cooperative, log
        self._exited = threading.Event()
        if returncode is not None:
            self._exited.set()

    def wait(self, timeout_s: float | None = None) -> int | None:
        return self.returncode if self._exited.wait(timeout_s) else None

    def _end(self, returncode: int) -> None:
        if not self._exited.is_set():
            self.returncode = returncode
            self._exited.set()

    def terminate(self) -> None:
        self.log.append(f"SIGTERM {self.pid}")
        self._end(-15)

    def request_save(self) -> None:
        self.log.append(f"SIGUSR1 {self.pid}")
        if self.cooperative:
            self._end(75)

    def kill(self) -> None:
        self.log.append(f"SIGKILL {self.pid}")
        self._end(-9)

    def stop_leftovers(self, grace_s: float) -> list[int]:
        return []


class FakeOps(ProcessOps):
    """ProcessOps without processes: each spawn plays the next attempt of `plan` (as tests/fake_trainer.py does)."""

    def __init__(self, plan: list[dict[str, Any]]) -> None:
        super().__init__()
        self.plan = plan
        self.trainers: list[FakeTrainer] = []
        self.log: list[str] = []  # spawns, signals and stack dumps, in the order they happened
        self.envs: list[dict[str, str]] = []  # each attempt's environment
        self.on_spawn: Callable[[int], None] | None = None  # called with the attempt number at each spawn
        # the machine's evidence, scripted per attempt: "killed": [{"main": bool}] are the kernel's OOM kills
        self.probes = Probes(cgroup=lambda pid: None, tree=lambda pid: (0, {pid}), shm=lambda: None,
                             kills=self._kills, clock_usec=lambda: 0)

    def protect_from_oom(self) -> str:
        self.protected = True
        return "oom_score_adj untouched (fake)"

    def _kills(self, pids: set[int], main_pid: int, since_usec: int,
               memcg: str | None) -> tuple[bool, tuple[KernelKill, ...]]:
        step = self.plan[main_pid - 1001]
        return True, tuple(KernelKill(main_pid if k.get("main") else main_pid + 100, "python", bool(k.get("main")),
                                      bool(k.get("cgroup", True))) for k in step.get("killed", []))

    def spawn(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> FakeTrainer:
        from tests.fake_trainer import write_progress

        attempt = int(env["NNUNET_SUPERVISE_ATTEMPT"])
        step = self.plan[attempt - 1]
        self.envs.append(env)
        if self.on_spawn is not None:
            self.on_spawn(attempt)
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write("\n".join(write_progress(step, cwd, attempt)) + "\n")
        outcome = step["outcome"]
        codes = {"finish": 0, "crash": 1, "incompatible": 1, "disk_full": 74, "hang": None, "linger": None,
                 "cooperate": None}
        trainer = FakeTrainer(1000 + attempt, codes[outcome] if outcome in codes else int(outcome),
                              outcome == "cooperate", self.log)
        self.log.append(f"spawn {trainer.pid} {' '.join(argv[1:])}")
        self.trainers.append(trainer)
        return trainer

    def tree(self, marker: str) -> list[int]:
        return [t.pid for t in self.trainers if t.wait(0) is None]

    def stop_tree(self, marker: str, grace_s: float, pgid: int | None = None) -> list[int]:
        alive = [t for t in self.trainers if t.wait(0) is None]
        for t in alive:
            t.kill()
        return [t.pid for t in alive]

    def become_subreaper(self) -> bool:
        return True

    def state(self, pid: int) -> str:
        return "S"

    def dump_stacks(self, pids: list[int], out: Path) -> str:
        out.write_text("".join(f"## pid {pid}\n  hung_here (fake_trainer.py)\n" for pid in pids))
        self.log.append(f"dump {pids}")
        return f"stack dump of {len(pids)}/{len(pids)} process(es) in {out}"


class FakeClock:
    """Monotonic time that moves on by `step` at every look: deadlines arrive without anyone sleeping."""

    def __init__(self, step: float = 0.25) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(nnUNet_raw, nnUNet_preprocessed) with Dataset901_Tiny planned and preprocessed for 3d_fullres.

    Set NNUNET_SUPERVISE_TEST_CACHE to a folder to keep it between sessions while developing.
    """
    cache = os.environ.get("NNUNET_SUPERVISE_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("tiny-dataset")
    raw, pre, _ = make_dataset(root)
    return raw, pre


@pytest.fixture
def write_config(tmp_path: Path, tiny_dataset: tuple[Path, Path]) -> Callable[..., Path]:
    """Write a run.yaml for the demo trainer on the tiny dataset; keyword sections override the defaults."""

    def write(**sections: Any) -> Path:
        raw, pre = tiny_dataset
        defaults = {"restart": {"backoff_initial_s": 1, "backoff_max_s": 5}, "process": {"stop_grace_s": 20}}
        for key, value in sections.items():
            defaults[key] = {**defaults.get(key, {}), **value}
        return write_demo_config(tmp_path / "run.yaml", raw, pre, tmp_path / "results", **defaults)

    return write


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """An intact checkpoint_latest.pth shaped like nnU-Net's (epoch 7)."""
    from tests.ckpt_fixtures import nnunet_checkpoint, save

    return save(tmp_path / "checkpoint_latest.pth", nnunet_checkpoint())


def supervise(config: Path, *args: str, log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m supervisor run CONFIG` as a real daemon process (extra environment in env)."""
    out = open(log or config.with_suffix(".supervisor.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config), *args],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})


def state_of(ctx: Any) -> dict[str, Any]:
    """The run's state.json ({} while it does not exist or is being replaced)."""
    from supervisor.rundir.statefile import StateStore

    return StateStore(ctx.layout.state_file).load()


def events_of(ctx: Any) -> list[dict[str, Any]]:
    from supervisor.rundir.eventlog import read_events

    return list(read_events(ctx.layout.events_file))


def reach_epoch(ctx: Any, epoch: int, timeout_s: float = 240) -> int:
    """Wait until the supervised trainer reports `epoch`; returns the trainer's pid."""
    wait_for(lambda: (state_of(ctx).get("epoch") or 0) >= epoch, timeout_s, f"the trainer to reach epoch {epoch}")
    pid = state_of(ctx).get("pid")
    assert isinstance(pid, int)
    return pid


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll until predicate() is truthy; fail naming what we waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


TRAINER_DIR = "nnUNetTrainer_Demo__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="session")
def interrupted_training(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: tuple[Path, Path]) -> Path:
    """A real demo training (not supervised) SIGKILLed at the start of epoch 7: returns its trainer folder.

    fold_0 then holds checkpoint_latest.pth (epoch 6) and checkpoint_best.pth; `latest_epoch4.pth` beside
    the trainer folder (in its parent) is a copy of checkpoint_latest.pth taken when it held epoch 4.
    """
    import signal as _signal

    from supervisor.checkpoints.meta import CheckpointError, read_meta
    from supervisor.demo.dataset import nnunet_env

    raw, pre = tiny_dataset
    results = tmp_path_factory.mktemp("interrupted") / "results"
    env = nnunet_env(raw, pre, results)
    env["nnUNet_extTrainer"] = str(DEMO_TRAINERS)
    train = Path(sys.executable).parent / "nnUNetv2_train"
    fold = results / "Dataset901_Tiny" / TRAINER_DIR / "fold_0"
    with open(results.parent / "train.log", "wb") as log:
        proc = subprocess.Popen([str(train), "901", "3d_fullres", "0", "-tr", "nnUNetTrainer_Demo", "-device", "cpu"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    early = fold.parent.parent / "latest_epoch4.pth"

    def progress() -> bool:
        latest = fold / "checkpoint_latest.pth"
        if not early.exists() and latest.exists():
            try:
                if read_meta(latest).current_epoch == 4:
                    early.write_bytes(latest.read_bytes())
            except CheckpointError:
                pass  # caught mid-write; the next poll sees it whole
        logs = list(fold.glob("training_log_*.txt"))
        return bool(logs) and ": Epoch 7 " in logs[0].read_text()

    try:
        wait_for(progress, 240, "the unsupervised training to reach epoch 7", interval_s=0.2)
    finally:
        os.killpg(proc.pid, _signal.SIGKILL)
        proc.wait()
    assert early.exists(), "never saw checkpoint_latest.pth at epoch 4"
    return fold.parent


def copy_run(trainer_dir: Path, results: Path) -> Path:
    """Copy a trainer folder into a fresh nnUNet_results tree; returns the new fold_0."""
    import shutil

    dst = results / "Dataset901_Tiny" / TRAINER_DIR
    shutil.copytree(trainer_dir, dst)
    return dst / "fold_0"

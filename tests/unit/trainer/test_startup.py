"""The cooperative shim's start-up timing (cooperative.Startup) on a stand-in of nnU-Net's start-up calls, with a
fake wall clock; the process's start from /proc; the line report reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from supervisor.observe.report import parse_startup
from supervisor.trainer import cooperative
from supervisor.trainer.cooperative import STARTUP_PREFIX, Settings, Startup, own_start, process_started
from supervisor.trainer.launch import origin


class Wall:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class StartingTrainer:
    """nnU-Net's start-up order: load_checkpoint (--c) and on_train_start initialize a trainer that is not yet;
    on_train_start builds the dataloaders; each call advances the wall clock by what it costs."""

    def __init__(self, folder: Path, wall: Wall, costs: dict[str, float]) -> None:
        self.output_folder, self.wall, self.costs = str(folder), wall, costs
        self.was_initialized, self.current_epoch, self.num_epochs = False, 0, 1
        self.steps = 0

    def initialize(self) -> None:
        self.wall.t += self.costs["initialize"]
        self.was_initialized = True

    def load_checkpoint(self, filename: str) -> None:
        if not self.was_initialized:
            self.initialize()
        self.wall.t += self.costs["checkpoint"]

    def get_dataloaders(self) -> tuple[int, int]:
        self.wall.t += self.costs["data"]
        return 1, 2

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        self.dataloaders = self.get_dataloaders()
        self.wall.t += self.costs["setup"]

    def train_step(self, batch: Any) -> dict[str, float]:
        self.wall.t += self.costs["step"] if self.steps == 0 else 0.1
        self.steps += 1
        return {"loss": 1.0}

    # the rest of the protocol the cooperative wrappers expect
    def save_checkpoint(self, filename: str) -> None: ...
    def on_epoch_start(self) -> None: ...
    def on_epoch_end(self) -> None: ...
    def on_train_end(self) -> None: ...
    def validation_step(self, batch: Any) -> dict[str, float]:
        return {"loss": 1.0}


COSTS = {"initialize": 2.0, "checkpoint": 0.5, "data": 1.25, "setup": 0.25, "step": 3.5}


def start(tmp_path: Path, resume: bool, capsys: pytest.CaptureFixture[str],
          heartbeat: Path | None = None) -> tuple[StartingTrainer, Startup, str]:
    wall = Wall()
    startup = Startup(started=wall.t - 4.0, wall=wall)  # the process started 4 s before: the imports
    startup.imports_done = wall.t
    wall.t += 0.75  # get_trainer_from_args: the class search, the plans, the constructor
    startup.built = wall.t
    trainer = StartingTrainer(tmp_path, wall, COSTS)
    coop = cooperative.Cooperation(trainer, Settings(heartbeat=heartbeat, heartbeat_min_interval_s=0.0),
                                   clock=wall)
    startup.install(trainer, coop)
    coop.install()
    if resume:
        trainer.load_checkpoint("checkpoint_latest.pth")
    trainer.on_train_start()
    trainer.wall.t += 0.5  # on_epoch_start, on_train_epoch_start, the first batch
    trainer.train_step(None)
    trainer.train_step(None)
    return trainer, startup, capsys.readouterr().out


def test_the_split_adds_up_and_is_printed_once_at_the_first_step(tmp_path: Path, restore: None,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, startup, out = start(tmp_path, resume=False, capsys=capsys)
    lines = [line for line in out.splitlines() if line.startswith(STARTUP_PREFIX)]
    assert lines == [f"{STARTUP_PREFIX} imports 4.0 s, trainer 0.8 s, initialize 2.0 s, data+workers 1.2 s, "
                     "other 0.2 s, first step 4.0 s (total 12.2 s)"]
    doc = startup.doc()
    assert doc is not None
    assert doc == {"imports": 4.0, "trainer": 0.75, "initialize": 2.0, "data+workers": 1.25, "other": 0.25,
                   "first step": 4.0, "total": 12.25}
    assert sum(v for k, v in doc.items() if k != "total") == pytest.approx(doc["total"])


def test_a_resume_initializes_in_load_checkpoint_and_times_the_checkpoint_apart(
        tmp_path: Path, restore: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, startup, _ = start(tmp_path, resume=True, capsys=capsys)
    doc = startup.doc()
    assert doc is not None
    assert doc["initialize"] == 2.0 and doc["checkpoint"] == 0.5 and doc["data+workers"] == 1.25
    assert sum(v for k, v in doc.items() if k != "total") == pytest.approx(doc["total"]) == 12.75


def test_the_heartbeat_carries_the_split_after_the_first_step(tmp_path: Path, restore: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    beat = tmp_path / "heartbeat.json"
    start(tmp_path, resume=False, capsys=capsys, heartbeat=beat)
    body = json.loads(beat.read_text())
    assert body["startup"]["total"] == 12.25 and body["iteration"] == 2  # the rest of the beat as before


def test_report_reads_the_line_back(tmp_path: Path, restore: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, out = start(tmp_path, resume=True, capsys=capsys)
    parsed = parse_startup(("nnU-Net's own output\n" + out).encode())
    assert parsed is not None
    assert list(parsed["parts"]) == ["imports", "trainer", "initialize", "checkpoint", "data+workers", "other",
                                     "first step"]
    assert parsed["total_s"] == 12.8 and parsed["parts"]["first step"] == 4.0


def test_without_a_known_start_the_split_begins_where_the_shim_saw_the_trainer(
        tmp_path: Path, restore: None, capsys: pytest.CaptureFixture[str]) -> None:
    wall = Wall()
    trainer = StartingTrainer(tmp_path, wall, COSTS)
    startup = Startup(wall=wall)  # install() without the launch's stamps (a trainer wrapped by other means)
    startup.install(trainer)
    trainer.on_train_start()
    trainer.train_step(None)
    assert startup.doc() == {"initialize": 2.0, "data+workers": 1.25, "other": 0.25, "first step": 3.5,
                             "total": 7.0}


def test_no_line_before_the_first_step(tmp_path: Path) -> None:
    wall = Wall()
    startup = Startup(started=wall.t, wall=wall)
    startup.install(StartingTrainer(tmp_path, wall, COSTS))
    assert startup.line() is None and startup.doc() is None


# /proc/self/stat of a process whose name has spaces and parentheses; starttime (field 22) is 12345 ticks
STAT = "4242 (py (thon) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 3 0 12345 1000 100"


def test_the_process_start_from_proc() -> None:
    assert process_started(5000.0, STAT, "125.45 300.00\n", 100) == pytest.approx(5000.0 - (125.45 - 123.45))
    assert process_started(5000.0, "garbage", "125.45 300.00", 100) is None
    assert process_started(5000.0, STAT, "100.00 1.0", 100) is None  # a container's own uptime: before its start


def test_this_process_has_a_start_before_now() -> None:
    import time

    now = time.time()
    started = own_start(now)
    if started is None:
        pytest.skip("no /proc here")
    assert started <= now


def test_an_implausible_proc_start_falls_back_to_the_shims_first_line() -> None:
    assert origin(1000.0, 999.5) == 999.5
    assert origin(1000.0, None) == 1000.0
    assert origin(1000.0, 10.0) == 1000.0  # hours before: another clock's idea of boot
    assert origin(1000.0, 1001.0) == 1000.0


@pytest.fixture
def restore() -> Any:
    import signal

    saved = {sig: signal.getsignal(sig) for sig in cooperative.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)

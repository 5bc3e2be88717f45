"""Shared fixtures: the tiny real nnU-Net dataset (made once per session) and a run.yaml writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.demo.dataset import make_dataset

DEMO_TRAINERS = Path(__file__).resolve().parents[1] / "supervisor" / "demo" / "trainers"


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
        cfg: dict[str, Any] = {
            "nnunet": {"dataset": 901, "configuration": "3d_fullres", "fold": 0, "trainer": "nnUNetTrainer_Demo",
                       "device": "cpu", "trainer_paths": [str(DEMO_TRAINERS)],
                       "env": {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}},
            "paths": {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
                      "nnUNet_results": str(tmp_path / "results")},
            "restart": {"backoff_initial_s": 1, "backoff_max_s": 5},
            "process": {"stop_grace_s": 20},
        }
        for key, value in sections.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        path = tmp_path / "run.yaml"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    return write


def supervise(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m supervisor run CONFIG` as a real daemon process."""
    out = open(log or config.with_suffix(".supervisor.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(config), *args],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll until predicate() is truthy; fail naming what we waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")

"""The one run.yaml builder for the tiny demo dataset: the demo, the tests and the benches all write theirs here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from supervisor.demo.dataset import DATASET_ID

TRAINERS = Path(__file__).resolve().parent / "trainers"
DEMO_TRAINER = "nnUNetTrainer_Demo"
# One augmentation worker and one export process: the tiny cases need no more, and two runs at once on a 2-core
# machine stay responsive (nnU-Net's default export pool is 8 processes).
QUIET_ENV = {"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1"}


def demo_config(raw: Path | None, pre: Path, results: Path, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """A run.yaml document that trains the tiny dataset on the CPU with the demo trainer; each keyword replaces keys
    of that section (`nnunet={"trainer": ...}`, `restart={...}`), the rest keep these defaults."""
    doc: dict[str, dict[str, Any]] = {
        "nnunet": {"dataset": DATASET_ID, "configuration": "3d_fullres", "fold": 0, "trainer": DEMO_TRAINER,
                   "device": "cpu", "trainer_paths": [str(TRAINERS)], "env": dict(QUIET_ENV)},
        "paths": {"nnUNet_raw": None if raw is None else str(raw), "nnUNet_preprocessed": str(pre),
                  "nnUNet_results": str(results)},
    }
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return doc


def write_demo_config(path: Path, raw: Path | None, pre: Path, results: Path, *, comment: str = "",
                      **sections: Mapping[str, Any]) -> Path:
    """Write demo_config(...) as YAML to path (a comment line on top, if given); returns path."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(head + yaml.safe_dump(demo_config(raw, pre, results, **sections), sort_keys=False))
    return path

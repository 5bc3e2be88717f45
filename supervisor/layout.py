"""Where nnU-Net keeps things: dataset names, the fold folder, checkpoints, and our run directory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from supervisor.errors import ConfigError

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def resolve_dataset_name(dataset: Union[int, str], roots: list[Path]) -> str:
    """Turn a dataset id into its DatasetXXX_Name folder the way nnU-Net does (unique across the roots)."""
    if isinstance(dataset, str):
        return dataset
    prefix = f"Dataset{dataset:03d}_"
    found = sorted({p.name for root in roots if root.is_dir() for p in root.iterdir()
                    if p.is_dir() and p.name.startswith(prefix)})
    if not found:
        raise ConfigError([f"nnunet.dataset: no folder {prefix}* in " + ", ".join(str(r) for r in roots)])
    if len(found) > 1:
        raise ConfigError([f"nnunet.dataset: id {dataset} is ambiguous, found {', '.join(found)}; "
                           "give the full name instead"])
    return found[0]


class RunFiles:
    """Our own files of one supervised stage, under its `supervisor_dir`: what the engine writes and locks."""

    @property
    def supervisor_dir(self) -> Path:
        raise NotImplementedError

    @property
    def place(self) -> Path:
        """The folder the stage works in: its processes are marked with it, messages name it."""
        raise NotImplementedError

    @property
    def state_file(self) -> Path:
        return self.supervisor_dir / "state.json"

    @property
    def heartbeat_file(self) -> Path:
        """Written by the trainer in cooperative mode (supervisor.cooperative), at most once a second."""
        return self.supervisor_dir / "heartbeat.json"

    @property
    def events_file(self) -> Path:
        return self.supervisor_dir / "events.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.supervisor_dir / "supervisor.lock"

    @property
    def quarantine_dir(self) -> Path:
        return self.supervisor_dir / "quarantine"

    def attempt_log(self, attempt: int) -> Path:
        return self.supervisor_dir / f"attempt-{attempt}.log"


@dataclass(frozen=True)
class PreprocessLayout(RunFiles):
    """Paths of one dataset's supervised preprocessing: nnU-Net writes under nnUNet_preprocessed/<dataset>/, our
    run directory is its `supervisor/` folder (nnU-Net only ever replaces the configurations' own folders)."""

    preprocessed: Path
    dataset_name: str

    @property
    def dataset_dir(self) -> Path:
        return self.preprocessed / self.dataset_name

    @property
    def place(self) -> Path:
        return self.dataset_dir

    @property
    def supervisor_dir(self) -> Path:
        return self.dataset_dir / "supervisor"


@dataclass(frozen=True)
class PredictLayout(RunFiles):
    """A supervised prediction: nnUNetv2_predict writes into `output`, our run directory is its `supervisor/` (or
    `run_dir`: the final step of an experiment's prediction writes into the folder whose `supervisor/` is the whole
    prediction's)."""

    output: Path
    run_dir: Path | None = None

    @property
    def place(self) -> Path:
        return self.output

    @property
    def supervisor_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else self.output / "supervisor"


@dataclass(frozen=True)
class PipelineLayout(PredictLayout):
    """An experiment's prediction, all steps (supervisor.pipeline): its own state and lock in the run directory of
    the prediction, beside the last step's (the state.json there is the last step's)."""

    @property
    def state_file(self) -> Path:
        return self.supervisor_dir / "pipeline.json"

    @property
    def lock_file(self) -> Path:
        return self.supervisor_dir / "pipeline.lock"


@dataclass(frozen=True)
class RunLayout(RunFiles):
    """Paths of one training run (dataset, trainer, plans, configuration, fold) under nnUNet_results."""

    results: Path
    dataset_name: str
    trainer: str
    plans: str
    configuration: str
    fold: Union[int, str]

    @property
    def fold_dir(self) -> Path:
        return (self.results / self.dataset_name / f"{self.trainer}__{self.plans}__{self.configuration}"
                / f"fold_{self.fold}")

    @property
    def place(self) -> Path:
        """What messages name for this run."""
        return self.fold_dir

    @property
    def supervisor_dir(self) -> Path:
        return self.fold_dir / "supervisor"

    def checkpoint(self, name: str) -> Path:
        return self.fold_dir / name

    def existing_checkpoints(self) -> list[Path]:
        """Checkpoints in the order nnU-Net's --c looks for them (final, latest, best)."""
        return [p for p in map(self.checkpoint, CHECKPOINT_NAMES) if p.is_file()]

    def is_finished(self) -> bool:
        """A fold is done when training wrote checkpoint_final.pth and validation wrote its summary."""
        return (self.checkpoint("checkpoint_final.pth").is_file()
                and (self.fold_dir / "validation" / "summary.json").is_file())

    def training_logs(self) -> list[Path]:
        """nnU-Net's training_log_*.txt files, oldest first (one per trainer start)."""
        if not self.fold_dir.is_dir():
            return []

        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:  # gone meanwhile, or a broken link: sorts first, readers skip it
                return 0.0

        return sorted(self.fold_dir.glob("training_log_*.txt"), key=lambda p: (mtime(p), p.name))


_PART_DIR = re.compile(r"^part-\d+-of-\d+$")


def part_dirs(supervisor_dir: Path) -> list[Path]:
    """The run directories of the parts (stages.prediction.parts) of the prediction whose run directory is
    supervisor_dir: part-K-of-N/, in name order."""
    try:
        return sorted(p for p in supervisor_dir.iterdir() if _PART_DIR.match(p.name) and p.is_dir())
    except OSError:
        return []

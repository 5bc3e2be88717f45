"""What `nnunet-supervise preprocess CONFIG` preprocesses, from a run.yaml or an experiment file read once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import Config, ResolvedPaths, parse_config, read_document, resolve_paths
from supervisor.errors import ConfigError
from supervisor.expfile import is_experiment, parse_experiment
from supervisor.layout import PreprocessLayout, resolve_dataset_name

# nnUNetv2_plan_and_preprocess's configurations when none are named
NNUNET_DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DATASET_RE = re.compile(r"^Dataset(\d{3})_")


@dataclass(frozen=True)
class PreprocessContext:
    """One dataset to plan and preprocess, resolved."""

    config_path: Path
    config: Config  # the engine's sections (restart, process, power, notify, ...) and nnunet's env
    paths: ResolvedPaths
    raw: Path  # nnUNet_raw: preprocessing reads the raw dataset
    dataset_name: str
    configurations: list[str]
    layout: PreprocessLayout
    experiment: bool  # the file is an experiment file

    @property
    def dataset_id(self) -> int:
        m = DATASET_RE.match(self.dataset_name)
        assert m is not None  # checked in load
        return int(m.group(1))

    @property
    def raw_dataset(self) -> Path:
        return self.raw / self.dataset_name

    @classmethod
    def load(cls, config_path: Path, doc: Any = None) -> PreprocessContext:
        """Load and resolve; raises ConfigError naming what is wrong (`doc`: the file's document, read once)."""
        config_path = config_path.resolve()
        source = str(config_path)
        doc = read_document(config_path) if doc is None else doc
        experiment = is_experiment(doc)
        if experiment:
            spec = parse_experiment(doc, source)
            asked = spec.preprocess.configurations or spec.experiment.configurations
            configurations = list(asked) if asked else list(NNUNET_DEFAULT_CONFIGURATIONS)
            # the sections every fold shares; configuration and fold do not matter to preprocessing
            cfg = spec.fold_config(configurations[0], 0)
        else:
            cfg = parse_config(doc, source)
            configurations = list(cfg.preprocess.configurations or [cfg.nnunet.configuration])
        try:
            paths = resolve_paths(cfg, config_path.parent)
            if paths.raw is None:
                raise ConfigError(["paths.nnUNet_raw: not set in the config and $nnUNet_raw is not in the environment; "
                                   "preprocessing reads the raw dataset from there"])
            name = resolve_dataset_name(cfg.nnunet.dataset, [paths.raw, paths.preprocessed])
            if DATASET_RE.match(name) is None:
                raise ConfigError([f"nnunet.dataset: {name!r} is not a DatasetXXX_Name folder name"])
            if not (paths.raw / name / "dataset.json").is_file():
                raise ConfigError([f"nnunet.dataset: {paths.raw / name / 'dataset.json'} is missing; preprocessing "
                                   "needs the raw dataset (imagesTr, labelsTr, dataset.json) in nnUNet_raw"])
        except ConfigError as exc:
            raise ConfigError(exc.problems, source) from None
        return cls(config_path, cfg, paths, paths.raw, name, configurations, PreprocessLayout(paths.preprocessed, name),
                   experiment)

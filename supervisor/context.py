"""A loaded config with everything derived from it: nnU-Net folders, dataset name, run layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from supervisor.config import Config, ResolvedPaths, parse_config, read_document, resolve_paths, trainer_paths
from supervisor.errors import ConfigError
from supervisor.expfile import is_experiment, parse_experiment
from supervisor.layout import RunLayout, resolve_dataset_name


@dataclass(frozen=True)
class RunContext:
    """One run, resolved: which folders, which fold, which trainer folders."""

    config_path: Path
    config: Config
    paths: ResolvedPaths
    dataset_name: str
    layout: RunLayout
    trainer_paths: list[Path]

    @classmethod
    def load(cls, config_path: Path, fold: int | str | None = None, configuration: str | None = None,
             doc: Any = None, trainer: str | None = None, plans: str | None = None) -> RunContext:
        """Load and resolve; raises ConfigError naming what is wrong. `fold` overrides nnunet.fold (a SLURM
        job array runs one config for several folds). From an experiment file, the run of one of its cells: both
        `configuration` and `fold` are then needed (and in a study of several trainers or plans, its `trainer` and
        `plans`). `doc`: the file's document, when the caller read it already
        (a file is read and parsed once per command)."""
        config_path = config_path.resolve()
        doc = read_document(config_path) if doc is None else doc
        if is_experiment(doc):
            if configuration is None or fold is None:
                raise ConfigError(["this is an experiment file: `run` supervises all of it; one of its folds is "
                                   "`run FILE --configuration C --fold F`"], str(config_path))
            spec = parse_experiment(doc, str(config_path))
            problems = []
            for given, listed, option in ((trainer, spec.trainers, "--trainer"), (plans, spec.plans_names, "--plans")):
                if given is None and len(listed) > 1:
                    problems.append(f"{option}: this experiment has several ({', '.join(listed)}); name the cell's")
                elif given is not None and given not in listed:
                    problems.append(f"{option}: {given} is not of this experiment ({', '.join(listed)})")
            if problems:
                raise ConfigError(problems, str(config_path))
            study = len(spec.studies) > 1  # the single-trainer experiment's cell: nnunet.trainer / nnunet.plans
            cfg = spec.fold_config(configuration, parse_fold(fold), (trainer or spec.trainers[0]) if study else None,
                                   (plans or spec.plans_names[0]) if study else None)
        else:
            if trainer is not None or plans is not None:
                raise ConfigError(["--trainer/--plans: only with an experiment file (a run.yaml names nnunet.trainer "
                                   "and nnunet.plans)"], str(config_path))
            if configuration is not None:
                raise ConfigError([f"--configuration: only with an experiment file (this run.yaml trains "
                                   f"nnunet.configuration; got {configuration!r})"], str(config_path))
            cfg = parse_config(doc, str(config_path))
            if fold is not None:
                cfg = cfg.model_copy(update={"nnunet": cfg.nnunet.model_copy(update={"fold": parse_fold(fold)})})
        return cls.from_config(config_path, cfg)

    @classmethod
    def from_config(cls, config_path: Path, cfg: Config) -> RunContext:
        """Resolve a validated config (of the file at config_path: relative paths count from its folder)."""
        base = config_path.parent
        try:
            paths = resolve_paths(cfg, base)
            roots = [p for p in (paths.preprocessed, paths.raw, paths.results) if p is not None]
            name = resolve_dataset_name(cfg.nnunet.dataset, roots)
        except ConfigError as exc:  # found after loading: still this file's problem, named by its path
            raise ConfigError(exc.problems, str(config_path)) from None
        nn = cfg.nnunet
        layout = RunLayout(paths.results, name, nn.trainer, nn.plans, nn.configuration, nn.fold)
        return cls(config_path, cfg, paths, name, layout, trainer_paths(cfg, base))


def parse_fold(value: int | str) -> int | Literal["all"]:
    """A fold as nnU-Net takes it: 0, 1, ... or "all"."""
    text = str(value).strip()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise ConfigError([f'--fold: got {value!r}; allowed: a fold number 0, 1, 2, ... or "all"'], "command line")

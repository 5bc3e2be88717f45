"""What `nnunet-supervise predict CONFIG [-i IN] [-o OUT]` predicts, from a run.yaml read once: the run's model
(trainer, plans, configuration, the folds), the input folder, the output folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from supervisor.config import Config, PredictSection, parse_config, read_document
from supervisor.context import RunContext
from supervisor.errors import ConfigError
from supervisor.expfile import is_experiment
from supervisor.fileread import read_bytes
from supervisor.layout import PredictLayout
from supervisor.stages.prediction.parts import Part

Fold = Union[int, Literal["all"]]


@dataclass(frozen=True)
class PredictContext:
    """One prediction, resolved."""

    config_path: Path
    config: Config
    run: RunContext  # the run whose model predicts
    input: Path
    output: Path
    folds: list[Fold]
    model_dir: Path  # <results>/<dataset>/<trainer>__<plans>__<configuration>
    file_ending: str  # the model's dataset.json: what inputs and outputs end in
    layout: PredictLayout
    prev_stage: Path | None = None  # a cascade's: the low-resolution model's segmentations of the same input
    part: Part | None = None  # only this part of the input cases (stages.prediction.parts), in its own run directory
    retry_failed: bool = False  # cases set aside before are tried again (--retry-failed)

    @classmethod
    def for_model(cls, config_path: Path, config: Config, input_dir: Path, output: Path, folds: list[Fold],
                  save_probabilities: bool | None = None, prev_stage: Path | None = None,
                  layout: PredictLayout | None = None, part: Part | None = None) -> PredictContext:
        """One model of an experiment's prediction (the fold config of its configuration): ConfigError names a
        missing checkpoint or dataset.json. save_probabilities None: the predict section's; layout None: the run
        directory is <output>/supervisor/."""
        cfg = config if save_probabilities is None else config.model_copy(update={
            "predict": config.predict.model_copy(update={"save_probabilities": save_probabilities})})
        run = RunContext.from_config(config_path, cfg)
        model_dir = run.layout.fold_dir.parent
        problems = _missing(model_dir, folds, cfg.predict.checkpoint)
        ending = dataset_file_ending(model_dir / "dataset.json")
        if ending is None:
            problems.append(f"the model's {model_dir / 'dataset.json'} is missing or names no file_ending")
        if problems:
            raise ConfigError(problems, str(config_path))
        assert ending is not None
        return cls(config_path, cfg, run, input_dir, output, folds, model_dir, ending,
                   layout or PredictLayout(output), prev_stage, part)

    @classmethod
    def load(cls, config_path: Path, doc: Any = None, input_dir: str | None = None,
             output_dir: str | None = None, part: Part | None = None) -> PredictContext:
        """Load and resolve; ConfigError names what is wrong. -i / -o override predict.input / predict.output
        (relative to the current folder, as on any command line; the file's own paths count from its folder); a
        part predicts in its own run directory, <output>/supervisor/part-K-of-N/."""
        config_path = config_path.resolve()
        source = str(config_path)
        doc = read_document(config_path) if doc is None else doc
        if is_experiment(doc):
            raise ConfigError(["an experiment file: `nnunet-supervise predict` predicts what its find_best chose "
                               "(supervisor.pipeline), not one run's model"], source)
        cfg = parse_config(doc, source)
        run = RunContext.from_config(config_path, cfg)
        p = cfg.predict
        inp, out, problems = folders(config_path, p, input_dir, output_dir)
        nn = cfg.nnunet
        model_dir = run.layout.fold_dir.parent
        folds: list[Fold] = list(p.folds) if p.folds is not None else [nn.fold]
        problems += _missing(model_dir, folds, p.checkpoint)
        ending = dataset_file_ending(model_dir / "dataset.json")
        if ending is None:
            problems.append(f"the model's {model_dir / 'dataset.json'} is missing or names no file_ending "
                            "(nnU-Net writes it when the training starts)")
        if problems:
            raise ConfigError(problems, source)
        assert ending is not None
        whole = PredictLayout(out)
        layout = whole if part is None else PredictLayout(out, whole.supervisor_dir / part.name)
        return cls(config_path, cfg, run, inp, out, folds, model_dir, ending, layout, None, part)


def folders(config_path: Path, p: PredictSection, input_dir: str | None,
            output_dir: str | None) -> tuple[Path, Path, list[str]]:
    """(input, output, problems): -i / -o over predict.input / predict.output (relative to the current folder, as on
    any command line; the file's own paths count from its folder); ConfigError where one is not set at all."""
    paths: dict[str, Path] = {}
    problems = []
    for name, given, key in (("input", input_dir, p.input), ("output", output_dir, p.output)):
        if given is not None:
            paths[name] = Path(given).resolve()
        elif key is not None:
            paths[name] = (config_path.parent / key).resolve()
        else:
            problems.append(f"predict.{name}: not set (in the file, or -{name[0]} on the command line)")
    if problems:
        raise ConfigError(problems, str(config_path))
    inp, out = paths["input"], paths["output"]
    if not inp.is_dir():
        problems.append(f"predict.input: {inp} is not a folder")
    if out == inp or inp in out.parents or out in inp.parents:
        problems.append(f"predict.output: {out} must be outside the input folder {inp} (and not hold it): "
                        "nnU-Net reads every image there")
    return inp, out, problems


def _missing(model_dir: Path, folds: list[Fold], checkpoint: str) -> list[str]:
    out = []
    for f in folds:
        path = model_dir / f"fold_{f}" / checkpoint
        if not path.is_file():
            out.append(f"predict.folds: {path} is missing (train fold {f} first, or name another predict.checkpoint "
                       "such as checkpoint_latest.pth)")
    return out


def dataset_file_ending(path: Path) -> str | None:
    """The file_ending a dataset.json names (None: unreadable or none)."""
    try:
        doc = json.loads(read_bytes(path, 16 << 20, "dataset.json"))
    except (OSError, ValueError):
        return None
    ending = doc.get("file_ending") if isinstance(doc, dict) else None
    return ending if isinstance(ending, str) and ending.startswith(".") else None

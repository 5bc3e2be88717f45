"""What `nnunet-supervise predict CONFIG [-i IN] [-o OUT]` predicts, from a run.yaml read once: the run's model
(trainer, plans, configuration, the folds), the input folder, the output folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from supervisor.config import Config, parse_config, read_document
from supervisor.context import RunContext
from supervisor.errors import ConfigError
from supervisor.expfile import is_experiment
from supervisor.fileread import read_bytes
from supervisor.layout import PredictLayout

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

    @classmethod
    def load(cls, config_path: Path, doc: Any = None, input_dir: str | None = None,
             output_dir: str | None = None) -> PredictContext:
        """Load and resolve; ConfigError names what is wrong. -i / -o override predict.input / predict.output
        (relative to the current folder, as on any command line; the file's own paths count from its folder)."""
        config_path = config_path.resolve()
        source = str(config_path)
        doc = read_document(config_path) if doc is None else doc
        if is_experiment(doc):
            raise ConfigError(["predict of an experiment file (what find_best chose) is not built yet; predict with "
                               "a run.yaml of the chosen configuration"], source)
        cfg = parse_config(doc, source)
        run = RunContext.from_config(config_path, cfg)
        p = cfg.predict
        problems = []
        paths: dict[str, Path] = {}
        for name, given, key in (("input", input_dir, p.input), ("output", output_dir, p.output)):
            if given is not None:
                paths[name] = Path(given).resolve()
            elif key is not None:
                paths[name] = (config_path.parent / key).resolve()
            else:
                problems.append(f"predict.{name}: not set (in the file, or -{name[0]} on the command line)")
        if problems:
            raise ConfigError(problems, source)
        inp, out = paths["input"], paths["output"]
        if not inp.is_dir():
            problems.append(f"predict.input: {inp} is not a folder")
        if out == inp or inp in out.parents or out in inp.parents:
            problems.append(f"predict.output: {out} must be outside the input folder {inp} (and not hold it): "
                            "nnU-Net reads every image there")
        nn = cfg.nnunet
        model_dir = run.layout.fold_dir.parent
        folds: list[Fold] = list(p.folds) if p.folds is not None else [nn.fold]
        for f in folds:
            checkpoint = model_dir / f"fold_{f}" / p.checkpoint
            if not checkpoint.is_file():
                problems.append(f"predict.folds: {checkpoint} is missing (train fold {f} first, or name another "
                                "predict.checkpoint such as checkpoint_latest.pth)")
        ending = _file_ending(model_dir / "dataset.json")
        if ending is None:
            problems.append(f"the model's {model_dir / 'dataset.json'} is missing or names no file_ending "
                            "(nnU-Net writes it when the training starts)")
        if problems:
            raise ConfigError(problems, source)
        assert ending is not None
        return cls(config_path, cfg, run, inp, out, folds, model_dir, ending, PredictLayout(out))


def _file_ending(path: Path) -> str | None:
    try:
        doc = json.loads(read_bytes(path, 16 << 20, "dataset.json"))
    except (OSError, ValueError):
        return None
    ending = doc.get("file_ending") if isinstance(doc, dict) else None
    return ending if isinstance(ending, str) and ending.startswith(".") else None

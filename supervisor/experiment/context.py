"""An experiment file, resolved: nnU-Net's folders, the dataset, its configurations in training order with what each
waits for, the cells (configuration x fold; in a study of several trainers or plans, trainer x plans x configuration x
fold), and the experiment's own folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from supervisor.config import ResolvedPaths, read_document, resolve_paths
from supervisor.context import RunContext, parse_fold
from supervisor.errors import ConfigError
from supervisor.expfile import ExperimentFile, is_experiment, parse_experiment
from supervisor.fileread import read_bytes
from supervisor.layout import PipelineLayout, RunLayout, resolve_dataset_name

Fold = Union[int, Literal["all"]]
# nnU-Net's own order (its documentation trains them so); the cascade after its low-resolution stage.
KNOWN_ORDER = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


@dataclass(frozen=True, order=True)
class Cell:
    """One fold of one configuration: what one fold supervisor trains. In a study (several trainers or plans) it
    names its trainer and plans too; None: the file's nnunet.trainer / nnunet.plans (the single-trainer experiment)."""

    configuration: str
    fold: Fold
    trainer: Union[str, None] = None
    plans: Union[str, None] = None

    @property
    def study(self) -> Union[str, None]:
        """`<trainer>__<plans>` (nnU-Net's own folder prefix) in a study, None otherwise."""
        return None if self.trainer is None else f"{self.trainer}__{self.plans}"

    @property
    def name(self) -> str:
        own = f"{self.configuration}/fold_{self.fold}"
        return own if self.study is None else f"{self.study}/{own}"

    def fields(self) -> dict[str, object]:
        """The cell in an event or state.json: configuration and fold, and in a study its trainer and plans."""
        own: dict[str, object] = {"configuration": self.configuration, "fold": self.fold}
        return own if self.trainer is None else {"trainer": self.trainer, "plans": self.plans, **own}

    def sibling(self, configuration: str, fold: Fold) -> Cell:
        """Another cell of the same trainer and plans."""
        return Cell(configuration, fold, self.trainer, self.plans)


@dataclass(frozen=True)
class ExperimentLayout:
    """The experiment's own folder, beside the trainer folders under nnUNet_results/<dataset>/."""

    root: Path  # nnUNet_results/<dataset>/nnunet-supervise__<experiment file name>

    @property
    def place(self) -> Path:
        return self.root

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def events_file(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.root / "experiment.lock"

    def fold_log(self, cell: Cell) -> Path:
        """The fold supervisor's own output (its trainer's is in the fold's attempt logs)."""
        prefix = "" if cell.study is None else f"{cell.study}__"
        return self.root / "folds" / f"{prefix}{cell.configuration}__fold_{cell.fold}.log"


def plans_configurations(plans: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The plans' configurations with `inherits_from` resolved (the cascade inherits 3d_fullres's data)."""
    raw = plans.get("configurations")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        merged: dict[str, Any] = {}
        chain, seen = entry, set()
        while isinstance(chain, dict) and name not in seen:
            merged = {**chain, **merged}
            parent = chain.get("inherits_from")
            seen.add(str(parent))
            chain = raw.get(parent) if isinstance(parent, str) else None
        out[str(name)] = merged
    return out


@dataclass(frozen=True)
class Study:
    """One trainer x plans of an experiment: its plans' configurations to train, in order, with what each waits for
    and its data identifier."""

    trainer: str
    plans: str
    configurations: list[str]
    waits_for: dict[str, str]
    data_identifiers: dict[str, str]


@dataclass(frozen=True)
class ExperimentContext:
    """One experiment file, resolved."""

    config_path: Path
    spec: ExperimentFile
    paths: ResolvedPaths
    dataset_name: str
    configurations: list[str]  # in training order
    waits_for: dict[str, str]  # configuration -> the configuration all of whose folds it needs first
    data_identifiers: dict[str, str]  # configuration -> its preprocessed data's folder name
    cells: list[Cell]
    layout: ExperimentLayout
    # configuration -> its previous_stage, for every configuration of the plans (a chosen cascade the experiment
    # did not train is predicted after its low-resolution stage all the same)
    previous_stages: dict[str, str] = field(default_factory=dict)
    # every trainer x plans; one for the single-trainer experiment (whose cells name neither)
    studies: tuple[Study, ...] = ()

    @classmethod
    def load(cls, config_path: Path, doc: Any = None) -> ExperimentContext:
        """Load and resolve an experiment file (`doc`: its document, when the caller read it already)."""
        config_path = config_path.resolve()
        source = str(config_path)
        doc = read_document(config_path) if doc is None else doc
        if not is_experiment(doc):
            raise ConfigError(["no `experiment` section: this is a run.yaml for one fold, and this command is for an "
                               "experiment file (see `nnunet-supervise schema --experiment`)"], source)
        spec = parse_experiment(doc, source)
        try:
            paths = resolve_paths(spec, config_path.parent)
            roots = [p for p in (paths.preprocessed, paths.raw, paths.results) if p is not None]
            name = resolve_dataset_name(spec.nnunet.dataset, roots)
            studies, previous, per_plans = [], {}, {}
            for trainer, plans in spec.studies:
                if plans not in per_plans:
                    per_plans[plans] = _configurations(spec, paths.preprocessed / name, plans)
                confs, waits, ids, prev = per_plans[plans]
                studies.append(Study(trainer, plans, confs, waits, ids))
                previous.update(prev)
        except ConfigError as exc:
            raise ConfigError(exc.problems, source) from None
        folds = [parse_fold(f) for f in spec.experiment.folds]
        layout = ExperimentLayout(paths.results / name / f"nnunet-supervise__{config_path.stem}")
        if len(studies) == 1:  # the single-trainer experiment: cells, names and files exactly as without studies
            one = studies[0]
            cells = [Cell(c, f) for c in one.configurations for f in folds]
            return cls(config_path, spec, paths, name, one.configurations, one.waits_for, one.data_identifiers, cells,
                       layout, previous, tuple(studies))
        configurations = _ordered({c for st in studies for c in st.configurations},
                                  {k: v for st in studies for k, v in st.waits_for.items()})
        waits_for = {k: v for st in studies for k, v in st.waits_for.items()}
        idents = {k: v for st in reversed(studies) for k, v in st.data_identifiers.items()}
        cells = [Cell(c, f, st.trainer, st.plans) for st in studies for c in st.configurations for f in folds]
        return cls(config_path, spec, paths, name, configurations, waits_for, idents, cells, layout, previous,
                   tuple(studies))

    @property
    def is_study(self) -> bool:
        """Several trainers or plans: cells name their trainer and plans."""
        return len(self.studies) > 1

    def study_of(self, cell: Cell) -> Study:
        trainer, plans = self.trainer_plans(cell)
        return next(st for st in self.studies if (st.trainer, st.plans) == (trainer, plans))

    def previous_stage(self, configuration: str) -> Union[str, None]:
        """The configuration a model of this one needs first (the cascade's low-resolution stage), trained here or
        only named by the plans; None for the others."""
        return self.waits_for.get(configuration) or self.previous_stages.get(configuration)

    def trainer_plans(self, cell: Cell) -> tuple[str, str]:
        nn = self.spec.nnunet
        return cell.trainer or nn.trainer, cell.plans or nn.plans

    def run(self, cell: Cell) -> RunContext:
        """The fold supervisor's view of one cell (as `run FILE --configuration C --fold F` loads it), from the
        document read once."""
        return RunContext.from_config(self.config_path, self.spec.fold_config(cell.configuration, cell.fold,
                                                                              cell.trainer, cell.plans))

    def fold_layout(self, cell: Cell) -> RunLayout:
        trainer, plans = self.trainer_plans(cell)
        return RunLayout(self.paths.results, self.dataset_name, trainer, plans, cell.configuration, cell.fold)

    def cell(self, configuration: str, fold: Fold, trainer: Union[str, None] = None,
             plans: Union[str, None] = None) -> Cell:
        """The experiment's cell of a configuration and fold (and trainer and plans: in a study, both required unless
        the study has only one of them); ConfigError for one it does not have."""
        nn = self.spec.nnunet
        if self.is_study:
            trainers, plans_names = self.spec.trainers, self.spec.plans_names
            trainer = trainer or (trainers[0] if len(trainers) == 1 else None)
            plans = plans or (plans_names[0] if len(plans_names) == 1 else None)
            if trainer is None or plans is None:
                raise ConfigError([f"this experiment has several trainers ({', '.join(trainers)}) and plans "
                                   f"({', '.join(plans_names)}): name the cell's --trainer and --plans"],
                                  str(self.config_path))
            found = Cell(configuration, fold, trainer, plans)
        else:
            if trainer not in (None, nn.trainer) or plans not in (None, nn.plans):
                raise ConfigError([f"--trainer {trainer} --plans {plans}: this experiment trains {nn.trainer} with "
                                   f"{nn.plans} only"], str(self.config_path))
            found = Cell(configuration, fold)
        if found not in self.cells:
            raise ConfigError([f"{found.name}: not a cell of this experiment"], str(self.config_path))
        return found

    @property
    def predicts(self) -> bool:
        """A predict section: find_best's choice is predicted after it (supervisor.pipeline)."""
        return self.spec.predict.output is not None

    def predict_layout(self, output: str | None = None) -> PipelineLayout:
        """Where the prediction's pipeline keeps its state (predict.output, or -o, and its supervisor/)."""
        out = Path(output).resolve() if output is not None else (self.config_path.parent / str(
            self.spec.predict.output)).resolve()
        return PipelineLayout(out)

    @property
    def preprocessed(self) -> Path:
        return self.paths.preprocessed / self.dataset_name

    def require_earlier_stages(self, todo: list[Cell]) -> None:
        """ConfigError when a cell to train needs a stage (the cascade's 3d_lowres) that is neither in the experiment
        nor finished: rendered for a cluster, it would start at once and fail for want of the lowres predictions."""
        for c in todo:
            study = self.study_of(c)
            stage = study.waits_for.get(c.configuration)
            if stage is not None and stage not in study.configurations and not all(
                    self.fold_layout(c.sibling(stage, f)).is_finished() for f in range(5)):
                where = "" if c.study is None else f" ({c.study})"
                raise ConfigError([f"experiment.configurations: {c.configuration}{where} needs every fold of {stage} "
                                   f"finished; add {stage} to the experiment or train it first"], str(self.config_path))


def _ordered(chosen: set[str] | list[str], waits_for: dict[str, str]) -> list[str]:
    """Configurations in nnU-Net's order, each stage after the one it needs."""
    order = {c: i for i, c in enumerate(KNOWN_ORDER)}
    out = sorted(chosen, key=lambda c: (order.get(c, len(order)), c))
    for later, earlier in waits_for.items():  # a stage after the one it needs
        if later in out and earlier in out and out.index(earlier) > out.index(later):
            out.remove(later)
            out.insert(out.index(earlier) + 1, later)
    return out


def _configurations(spec: ExperimentFile, dataset: Path,
                    plans_name: str) -> tuple[list[str], dict[str, str], dict[str, str], dict[str, str]]:
    """The configurations to train with one plans, in order, their dependencies, their data identifiers, and every
    configuration's previous stage in the plans; ConfigError for what cannot be trained."""
    plans_file = dataset / f"{plans_name}.json"
    key = "experiment.plans" if spec.experiment.plans is not None else "nnunet.plans"
    try:
        plans = json.loads(read_bytes(plans_file, 64 << 20, "plans file"))
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{key}: cannot read {plans_file} ({exc}); preprocess first: `nnunet-supervise "
                           "preprocess FILE`, or experiment.preprocess: true makes `run` do it"]) from None
    available = plans_configurations(plans if isinstance(plans, dict) else {})

    def preprocessed(name: str) -> bool:
        ident = available[name].get("data_identifier")
        return isinstance(ident, str) and (dataset / ident).is_dir()

    asked = spec.experiment.configurations
    if asked is None:  # every configuration in the plans whose preprocessed data is there
        chosen = [c for c in available if preprocessed(c)]
    else:
        unknown = [c for c in asked if c not in available]
        if unknown:
            raise ConfigError([f"experiment.configurations: {', '.join(unknown)} not in {plans_file.name}; "
                               f"available: {', '.join(available) or 'none'}"])
        chosen = list(asked)
    if not chosen:
        raise ConfigError([f"experiment.configurations: none of {', '.join(available)} has its preprocessed data in "
                           f"{dataset}; run nnUNetv2_preprocess"])
    waits_for = {c: str(available[c]["previous_stage"]) for c in chosen
                 if isinstance(available[c].get("previous_stage"), str)}
    chosen = _ordered(chosen, waits_for)
    idents = {c: str(available[c].get("data_identifier", "")) for c in chosen}
    previous = {c: str(v["previous_stage"]) for c, v in available.items() if isinstance(v.get("previous_stage"), str)}
    return chosen, waits_for, idents, previous

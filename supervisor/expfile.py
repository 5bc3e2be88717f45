"""An experiment file: a run.yaml whose nnunet section leaves out configuration and fold and that has an
`experiment` section; every other section is the default for each fold. `fold_config` yields the run.yaml of one
(configuration, fold) cell, which the fold supervisor runs exactly as a single run."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from supervisor.config import (
    Config,
    MetricsSection,
    NnunetCommon,
    NnunetSection,
    RunSections,
    _Section,
    check_configuration,
    check_cooperative,
    check_fold,
    validate,
)
from supervisor.errors import ConfigError

NPZ = "--npz"  # nnUNetv2_train: keep the validation's softmax, which find_best_configuration needs to ensemble


class DevicesSection(_Section):
    """Where the folds run and how many at once."""

    gpus: Union[Literal["auto"], list[Union[int, str]]] = "auto"  # auto: every GPU NVML sees; or indexes / UUIDs
    per_gpu: Union[Literal["auto"], int] = "auto"  # folds sharing one GPU: auto packs by memory
    slots: int = Field(1, ge=1)  # device cpu (or mps): folds at once
    # extension: auto packing keeps this factor of headroom over a fold's estimated or measured peak GPU memory
    memory_margin: float = Field(1.25, ge=1.0)

    @field_validator("per_gpu")
    @classmethod
    def _per_gpu(cls, v: Union[str, int]) -> Union[str, int]:
        if isinstance(v, int) and v < 1:
            raise ValueError('"auto" or a number of folds >= 1')
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: Union[str, list[Union[int, str]]]) -> Union[str, list[Union[int, str]]]:
        if isinstance(v, list):
            if not v:
                raise ValueError('"auto" or a non-empty list of GPU indexes or UUIDs')
            for g in v:
                if (isinstance(g, int) and g < 0) or (isinstance(g, str) and not g.startswith(("GPU-", "MIG-"))
                                                       and not g.isdigit()):
                    raise ValueError('"auto" or a list of GPU indexes (0, 1, ...) or UUIDs (GPU-..., MIG-...)')
            if len({str(g) for g in v}) != len(v):
                raise ValueError("a list of distinct GPUs")
        return v


class ExperimentSection(_Section):
    """Which cells (configuration x fold) to train, where, and what to do once they all finished."""

    configurations: Union[list[str], None] = None  # null: every configuration in the plans with its data there
    # a study: several trainers and/or plans (cells: trainer x plans x configuration x fold); null: nnunet.trainer /
    # nnunet.plans, the one-item form
    trainers: Union[list[str], None] = None
    plans: Union[list[str], None] = None
    folds: list[Union[int, Literal["all"]]] = [0, 1, 2, 3, 4]
    devices: DevicesSection = DevicesSection()
    find_best: bool = True  # nnUNetv2_find_best_configuration once every fold finished
    npz: bool = True  # pass --npz to every fold so that find_best can ensemble configurations
    preprocess: bool = False  # extension: nnunet-supervise preprocess first (a complete, verified dataset is skipped)
    fold_restarts: int = Field(3, ge=0)  # extension: a fold supervisor that crashed (exit 70) is started again

    @field_validator("configurations")
    @classmethod
    def _configurations(cls, v: Union[list[str], None]) -> Union[list[str], None]:
        if v is not None:
            if not v:
                raise ValueError("null (every configuration in the plans) or a non-empty list")
            for c in v:
                check_configuration(c)
            if len(set(v)) != len(v):
                raise ValueError("a list of distinct configuration names")
        return v

    @field_validator("trainers", "plans")
    @classmethod
    def _names(cls, v: Union[list[str], None]) -> Union[list[str], None]:
        if v is not None:
            if not v or any(not isinstance(n, str) or not n or "/" in n or "__" in n for n in v):
                raise ValueError("a non-empty list of names (no '/', no '__')")
            if len(set(v)) != len(v):
                raise ValueError("a list of distinct names")
        return v

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: list[Union[int, str]]) -> list[Union[int, str]]:
        if not v:
            raise ValueError('a non-empty list of folds (0, 1, ... or "all")')
        for f in v:
            check_fold(f)
        if len({str(f) for f in v}) != len(v):
            raise ValueError("a list of distinct folds")
        return v


class VolumeSource(_Section):
    """Where one of nnU-Net's folders comes from in a pod: a PersistentVolumeClaim or a path on the node."""

    pvc: Union[str, None] = None
    host_path: Union[str, None] = None

    @model_validator(mode="after")
    def _one(self) -> VolumeSource:
        if (self.pvc is None) == (self.host_path is None):
            raise ValueError("exactly one of pvc (a claim's name) or host_path (a folder on the node)")
        return self


class KubernetesSection(_Section):
    """How `kubernetes EXPERIMENT` renders its Jobs (nothing here is used by `run`)."""

    image: Union[str, None] = None  # the user's image: nnU-Net, torch and nnunet-supervise installed
    namespace: Union[str, None] = None
    parallelism: Union[int, None] = Field(None, ge=1)  # pods at once; default: from experiment.devices
    shm_size: str = "16Gi"  # /dev/shm as memory: a container's 64 MB default kills nnU-Net's augmentation workers
    cpu: Union[str, None] = None  # requests per pod, e.g. "8"
    memory: Union[str, None] = None  # e.g. "64Gi"
    # the three folders, mounted at the paths the experiment file names (so the file works unchanged in a pod)
    volumes: dict[Literal["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"], VolumeSource] = {}


class ExperimentFile(RunSections):
    """A whole experiment file."""

    experiment: ExperimentSection
    nnunet: NnunetCommon
    kubernetes: KubernetesSection = KubernetesSection()

    @model_validator(mode="after")
    def _cooperative_single_process(self) -> ExperimentFile:
        check_cooperative(self.cooperative, self.nnunet)
        return self

    @model_validator(mode="after")
    def _one_place_for_trainer_and_plans(self) -> ExperimentFile:
        """nnunet.trainer / nnunet.plans are the one-item form of experiment.trainers / experiment.plans: both given
        and differing is refused, naming both."""
        problems = []
        for one, many in (("trainer", "trainers"), ("plans", "plans")):
            listed = getattr(self.experiment, many)
            if listed is not None and one in self.nnunet.model_fields_set and listed != [getattr(self.nnunet, one)]:
                problems.append(f"nnunet.{one} ({getattr(self.nnunet, one)}) and experiment.{many} "
                                f"({', '.join(listed)}) both given and differ: name them in experiment.{many} only")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def trainers(self) -> list[str]:
        return list(self.experiment.trainers or [self.nnunet.trainer])

    @property
    def plans_names(self) -> list[str]:
        return list(self.experiment.plans or [self.nnunet.plans])

    @property
    def studies(self) -> list[tuple[str, str]]:
        """(trainer, plans) pairs, trainer-major; one pair for the single-trainer experiment."""
        return [(t, p) for t in self.trainers for p in self.plans_names]

    @model_validator(mode="after")
    def _predict_what_find_best_chose(self) -> ExperimentFile:
        p = self.predict
        if p.input is None and p.output is None:
            return self  # no predict section: the experiment ends with find_best
        problems = []
        if p.input is None or p.output is None:
            problems.append("predict: an experiment predicts with both predict.input and predict.output set")
        if p.folds is not None:
            problems.append("predict.folds: an experiment predicts with the folds find_best used (leave it out)")
        if not self.experiment.find_best:
            problems.append("predict: an experiment predicts what find_best chose; set experiment.find_best: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def fold_config(self, configuration: str, fold: Union[int, Literal["all"]], trainer: Union[str, None] = None,
                    plans: Union[str, None] = None) -> Config:
        """The run.yaml of one cell: this file's sections, its configuration and fold (and, in a study, its trainer
        and plans), --npz when asked; the experiment serves the metrics for all folds, so a fold serves none of its
        own."""
        nn = self.nnunet.model_dump()
        if trainer is not None:
            nn["trainer"] = trainer
        if plans is not None:
            nn["plans"] = plans
        if self.experiment.npz and NPZ not in nn["extra_args"]:
            nn["extra_args"] = [*nn["extra_args"], NPZ]
        sections = {name: getattr(self, name) for name in RunSections.model_fields}
        return Config(nnunet=NnunetSection(**nn, configuration=configuration, fold=fold),
                      **{**sections, "metrics": MetricsSection()})


def is_experiment(doc: Any) -> bool:
    return isinstance(doc, dict) and "experiment" in doc


def parse_experiment(doc: Any, source: str) -> ExperimentFile:
    """Validate an experiment file; a configuration or fold under nnunet is named as what it is."""
    nn = doc.get("nnunet") if isinstance(doc, dict) else None
    if isinstance(nn, dict):
        misplaced = [k for k in ("configuration", "fold") if k in nn]
        if misplaced:
            raise ConfigError([f"nnunet.{k}: not in an experiment file; list them under experiment.{k}s"
                               for k in misplaced], source)
    if isinstance(doc, dict) and doc.get("experiment") is None:
        doc = {**doc, "experiment": {}}  # `experiment:` with nothing under it: all defaults
    return validate(ExperimentFile, doc, source)

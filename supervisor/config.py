"""Load run.yaml into strict, typed models; every error names the key path, the value and what is allowed."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supervisor.errors import ConfigError
from supervisor.fileread import read_bytes

DATASET_NAME_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_CONFIG_BYTES = 1 << 20  # a run.yaml is a few hundred bytes
PATH_ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

# Arguments the supervisor itself controls; passing them through extra_args would fight it.
RESERVED_ARGS = {"--c", "-tr", "-p", "-device", "-num_gpus", "--val", "-pretrained_weights"}


class _Section(BaseModel):
    # strict: "10" is not an int and true is not a number; extra keys are errors, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class NnunetCommon(_Section):
    """What to train, for one fold or a whole experiment: the arguments of nnUNetv2_train but the configuration and
    the fold."""

    dataset: Union[int, str]
    trainer: str = "nnUNetTrainer"
    plans: str = "nnUNetPlans"
    device: Literal["cuda", "cpu", "mps"] = "cuda"
    num_gpus: int = Field(1, ge=1)
    trainer_paths: list[str] = []
    extra_args: list[str] = []
    env: dict[str, str] = {}

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: Union[int, str]) -> Union[int, str]:
        if isinstance(v, int):
            if not 1 <= v <= 999:
                raise ValueError("a dataset id from 1 to 999 or a full name like Dataset901_Tiny")
            return v
        if v.isascii() and v.isdigit():
            return cls._dataset(int(v))
        if not DATASET_NAME_RE.match(v):
            raise ValueError("a dataset id from 1 to 999 or a full name like Dataset901_Tiny")
        return v

    @field_validator("trainer", "plans")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not IDENTIFIER_RE.match(v):
            raise ValueError("a Python identifier (letters, digits, underscore)")
        return v

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, v: list[str]) -> list[str]:
        clash = sorted(set(v) & RESERVED_ARGS)
        if clash:
            raise ValueError(
                f"arguments other than {', '.join(sorted(RESERVED_ARGS))}: the supervisor sets those itself "
                f"from the other nnunet keys ({', '.join(clash)} given)"
            )
        return v

    @model_validator(mode="after")
    def _gpus(self) -> NnunetCommon:
        if self.num_gpus > 1 and self.device != "cuda":
            raise ValueError(f"num_gpus > 1 only with device: cuda (nnU-Net's DDP is CUDA only; got {self.num_gpus})")
        return self


def check_configuration(v: str) -> str:
    if not v or "/" in v or v.strip() != v:
        raise ValueError("a configuration name from the plans, e.g. 3d_fullres or 2d")
    return v


def check_fold(v: Union[int, str]) -> Union[int, str]:
    if isinstance(v, int) and v < 0:
        raise ValueError('a fold number 0, 1, 2, ... or "all"')
    return v


class NnunetSection(NnunetCommon):
    """What to train: the arguments of nnUNetv2_train."""

    configuration: str
    fold: Union[int, Literal["all"]] = 0
    # nnUNetv2_train's -pretrained_weights, for the first launch only (while the fold has no checkpoint): every
    # relaunch after that resumes the fold's own training with --c; relative to the config's folder
    pretrained_weights: Union[str, None] = None

    _configuration = field_validator("configuration")(classmethod(lambda cls, v: check_configuration(v)))
    _fold = field_validator("fold")(classmethod(lambda cls, v: check_fold(v)))


class PathsSection(_Section):
    """nnU-Net's three folders; each defaults to the environment variable of the same name."""

    nnUNet_raw: Union[str, None] = None
    nnUNet_preprocessed: Union[str, None] = None
    nnUNet_results: Union[str, None] = None


class RestartSection(_Section):
    """When and how fast to relaunch after a failure."""

    max_restarts: int = Field(10, ge=0)
    backoff_initial_s: float = Field(10.0, ge=0)
    backoff_max_s: float = Field(600.0, ge=0)
    max_attempts_without_progress: int = Field(3, ge=1)
    disk_check_s: float = Field(30.0, gt=0)  # extension: after a full disk, how often free space is looked at

    @model_validator(mode="after")
    def _order(self) -> RestartSection:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s >= backoff_initial_s (got {self.backoff_max_s} < {self.backoff_initial_s})"
            )
        return self


class ProcessSection(_Section):
    """How the trainer's process tree is stopped (extension to the contract)."""

    stop_grace_s: float = Field(30.0, ge=0)
    # the trainer's output kept per attempt (head and newest part; at most 1.5 x this on disk); null: no cap
    attempt_log_max_mb: Union[float, None] = Field(64.0, gt=0)
    # the first attempt's log and the newest this many are kept as they are; those between are gzipped
    attempt_logs_kept: int = Field(20, ge=0)

    @property
    def attempt_log_max_bytes(self) -> int | None:
        return None if self.attempt_log_max_mb is None else int(self.attempt_log_max_mb * 2**20)


class HeartbeatSection(_Section):
    """Progress expectations: when silence is a hang, a finished trainer lingers, or the loss diverged."""

    startup_grace_s: float = Field(900.0, ge=0)
    stall_timeout_s: Union[Literal["auto"], float] = "auto"
    # extensions to the contract
    stall_floor_s: float = Field(120.0, gt=0)  # auto never allows less silence than this
    validation_grace_s: float = Field(3600.0, gt=0)  # silence allowed in the final validation
    linger_grace_s: float = Field(120.0, ge=0)  # a finished trainer that has not exited by then is stopped
    nan_loss_epochs: int = Field(3, ge=0)  # this many epochs in a row with train_loss nan: diverged (0: off)

    @field_validator("stall_timeout_s")
    @classmethod
    def _positive(cls, v: Union[str, float]) -> Union[str, float]:
        if not isinstance(v, str) and v <= 0:
            raise ValueError('"auto" or a number of seconds > 0')
        return v


class CheckpointSection(_Section):
    """What to do about checkpoints that cannot be resumed."""

    on_incompatible: Literal["stop", "warm_start"] = "stop"
    allow_fresh_start: bool = False
    snapshots: int = Field(1, ge=0)  # verified checkpoint_latest copies kept in supervisor/snapshots/
    # a resume whose trainer settings (num_epochs, initial_lr, batch/patch size, plans, the fold's split) changed
    # since the checkpoint: stop before launching, or go on as the user means it
    on_changed_settings: Literal["stop", "continue"] = "stop"


class CooperativeSection(_Section):
    """Launch through the supervisor's shim (python -m supervisor.launch) for atomic, frequent, on-request saves."""

    enabled: bool = False
    save_every_epochs: Union[int, None] = Field(1, ge=1)  # null: only save_every_s (and the trainer's own)
    save_every_s: Union[float, None] = Field(None, gt=0)
    # a snapshot at a training step's boundary at least this often (copied in memory, written in the background):
    # a hard crash costs at most this plus a step (null: none; the saves above and a stop's save at the next step)
    snapshot_every_s: Union[float, None] = Field(None, gt=0)
    # extension: where a stop request saves: after the training step in flight ("step"), or at the epoch end as
    # before (for a trainer whose steps must not be cut, and to compare: bench/preempt.py)
    save_on_stop: Literal["step", "epoch"] = "step"
    # extension: how long a stop request waits for the trainer to finish its epoch and save; auto = 2 x the
    # longest recent epoch + 60 s (600 s before one was seen), then SIGTERM/SIGKILL as without cooperation
    stop_timeout_s: Union[Literal["auto"], float] = "auto"

    @field_validator("stop_timeout_s")
    @classmethod
    def _positive(cls, v: Union[str, float]) -> Union[str, float]:
        if not isinstance(v, str) and v <= 0:
            raise ValueError('"auto" or a number of seconds > 0')
        return v


class PowerSection(_Section):
    """Power events: a machine on battery stops the training resumably before the battery is empty."""

    battery_stop_percent: Union[float, None] = Field(15.0, ge=0, le=100)  # null: never stop on battery
    check_every_s: float = Field(30.0, gt=0)  # extension: how often the battery is read


class MetricsSection(_Section):
    """Prometheus metrics: served on a port and/or written in node_exporter's textfile format."""

    port: Union[int, None] = Field(None, ge=1, le=65535)
    host: str = "127.0.0.1"  # only this machine, unless set explicitly (e.g. 0.0.0.0)
    textfile: Union[str, None] = None  # e.g. /var/lib/node_exporter/textfile_collector/nnunet.prom


class NotifySection(_Section):
    """Notifications through apprise URLs (the optional extra nnunet-supervise[notify])."""

    urls: list[str] = []  # e.g. ["mailto://user:pass@example.com", "slack://...", "json://host/path"]
    on: list[Literal["give_up", "finished", "stall", "gpu_fault", "repeated_failures", "disk_full"]] = [
        "give_up", "finished", "stall", "gpu_fault", "repeated_failures", "disk_full"]
    repeated_failures: int = Field(3, ge=1)  # this many failed attempts in a row -> one notification


class RemediesSection(_Section):
    """After a failure with a known cause, change one thing for the next attempt (README: Recovery by cause)."""

    enabled: bool = True
    workers: bool = True  # host OOM, dying workers, a full /dev/shm: halve nnUNet_n_proc_DA
    min_workers: int = Field(0, ge=0)  # the floor (0: augmentation in the main process, slow but needs no workers)
    compile: bool = True  # a torch.compile failure: nnUNet_compile=f
    cuda_alloc: bool = True  # CUDA OOM: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    batch_size: bool = False  # CUDA OOM, opt-in, cooperative mode only: halve the batch size
    min_batch_size: int = Field(2, ge=1)
    override_user: bool = False  # may a remedy change a variable you set (nnunet.env, the supervisor's environment)?
    # the trainer's torch.load refuses a checkpoint our verification passed: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    weights_only: bool = True
    # extension: before each launch, fit nnUNet_n_proc_DA, nnUNet_def_n_proc and OMP_NUM_THREADS to the CPUs and
    # memory this process is really given (affinity, cgroup, SLURM), unless you set them
    fit_allocation: bool = True


class PreprocessSection(_Section):
    """`nnunet-supervise preprocess`: nnU-Net's planning and preprocessing, supervised (extension)."""

    # null: the run's configuration, or the experiment's configurations (nnU-Net's 2d 3d_fullres 3d_lowres when the
    # experiment names none); one that the plans do not have is skipped, as nnU-Net does
    configurations: Union[list[str], None] = None
    planner: str = "ExperimentPlanner"  # -pl: the planner that writes nnunet.plans (nnUNetPlans for this one)
    num_processes: Union[int, None] = Field(None, ge=1)  # -np; null: nnU-Net's 4, fitted to this allocation
    verify_dataset_integrity: bool = True
    # the learned allowance between two cases written never goes below this (cases differ in size a lot)
    stall_floor_s: float = Field(600.0, gt=0)
    # fingerprint and planning report nothing until they are done
    step_grace_s: float = Field(3600.0, gt=0)

    @field_validator("configurations")
    @classmethod
    def _known_names(cls, v: Union[list[str], None]) -> Union[list[str], None]:
        if v is not None:
            if not v:
                raise ValueError("an empty list preprocesses nothing; leave it out (null) or name configurations")
            for c in v:
                check_configuration(c)
        return v


# nnUNetv2_predict's own options (2.8) that are not the supervisor's: given whole, they are not one of ours run together
PREDICT_KNOWN = frozenset({"-step_size", "--disable_tta", "--verbose", "-prev_stage_predictions",
                           "--disable_progress_bar", "--not_on_device"})
# nnUNetv2_predict's arguments the supervisor sets itself from the run and the predict section
PREDICT_RESERVED = frozenset({"-i", "-o", "-d", "-p", "-tr", "-c", "-f", "-chk", "-device", "--continue_prediction",
                              "--save_probabilities", "-num_parts", "-part_id", "-npp", "-nps"})


class PredictSection(_Section):
    """`nnunet-supervise predict`: nnUNetv2_predict for the run's model, supervised (contract: "Prediction")."""

    input: Union[str, None] = None  # nnU-Net's input layout (CASE_0000.nii.gz, ...); relative to the config's folder
    output: Union[str, None] = None
    folds: Union[list[Union[int, Literal["all"]]], None] = None  # null: the run's fold
    checkpoint: str = "checkpoint_final.pth"
    save_probabilities: bool = False
    # extension: passed to nnUNetv2_predict as they are (e.g. -step_size 0.5, --disable_tta: yours, never ours)
    extra_args: list[str] = []
    # extension: the least silence allowed between two cases written (auto: 2 x the longest recent gap)
    stall_floor_s: float = Field(600.0, gt=0)
    # extension: the input cut into this many parts, each predicted by a supervised predictor of its own (one per GPU);
    # auto: one per GPU of the experiment's (its CPU slots on the CPU), one for a run.yaml (stages.prediction.parts)
    parts: Union[Literal["auto"], Annotated[int, Field(ge=1, le=1024)]] = "auto"

    @field_validator("folds")
    @classmethod
    def _some_folds(cls, v: Union[list[Union[int, str]], None]) -> Union[list[Union[int, str]], None]:
        if v is not None and not v:
            raise ValueError("an empty list predicts with no fold; leave it out (null: the run's fold) or name folds")
        return v

    @field_validator("extra_args")
    @classmethod
    def _not_ours(cls, v: list[str]) -> list[str]:
        # as argparse reads them: `-chk=NAME`, an abbreviated `--save_prob`, `-f0` name the same options
        longs = [r for r in PREDICT_RESERVED if r.startswith("--")]
        shorts = [r for r in PREDICT_RESERVED if not r.startswith("--")]
        clash = sorted({t for t in v if t.startswith("-") and (
            t.split("=", 1)[0] in PREDICT_RESERVED
            or (t.startswith("--") and len(t.split("=", 1)[0]) > 2
                and any(r.startswith(t.split("=", 1)[0]) for r in longs))
            or (not t.startswith("--") and t not in PREDICT_KNOWN and any(
                len(r) == 2 and t.startswith(r) for r in shorts)))})
        if clash:
            raise ValueError(f"arguments other than {', '.join(sorted(PREDICT_RESERVED))}: the supervisor sets those "
                             f"from the run and the predict section ({', '.join(clash)} given)")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_name(cls, v: str) -> str:
        if not v or "/" in v or not v.endswith(".pth"):
            raise ValueError("a checkpoint file name in the fold folder, e.g. checkpoint_final.pth")
        return v


class RunSections(_Section):
    """Everything of a run.yaml but its nnunet section: shared by a fold's run.yaml and an experiment file (where
    it is the default for every fold)."""

    paths: PathsSection = PathsSection()
    restart: RestartSection = RestartSection()
    process: ProcessSection = ProcessSection()
    heartbeat: HeartbeatSection = HeartbeatSection()
    checkpoint: CheckpointSection = CheckpointSection()
    cooperative: CooperativeSection = CooperativeSection()
    power: PowerSection = PowerSection()
    metrics: MetricsSection = MetricsSection()
    notify: NotifySection = NotifySection()
    remedies: RemediesSection = RemediesSection()
    preprocess: PreprocessSection = PreprocessSection()
    predict: PredictSection = PredictSection()


def check_cooperative(cooperative: CooperativeSection, nnunet: NnunetCommon) -> None:
    if cooperative.enabled and nnunet.num_gpus != 1:
        raise ValueError(f"cooperative.enabled: true needs nnunet.num_gpus: 1 (got {nnunet.num_gpus}); "
                         "multi-GPU (DDP) training runs without the shim")


class Config(RunSections):
    """A whole run.yaml."""

    nnunet: NnunetSection

    @model_validator(mode="after")
    def _cooperative_single_process(self) -> Config:
        check_cooperative(self.cooperative, self.nnunet)
        return self


class ResolvedPaths(BaseModel):
    """Absolute nnU-Net folders after applying environment defaults."""

    model_config = ConfigDict(frozen=True)

    raw: Union[Path, None]
    preprocessed: Path
    results: Path


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at the mapping that holds loc[-1]."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    keys = list(model.model_fields)
    # The order a person reads them in (inheritance puts a subclass's own fields last).
    first = [k for k in ("experiment", "nnunet", "dataset", "configuration", "fold") if k in keys]
    return first + [k for k in keys if k not in first]


def _key_path(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Keep the parts of pydantic's error location that are the user's keys, dropping union tags.

    pydantic inserts the member type of a Union (`int`, `literal['all']`, ...) into `loc`; walking the
    input document tells keys from tags, so a key that happens to look like a tag is still named.
    """
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and not isinstance(part, int) and part == loc[-1]:
            node = None  # the last part of an extra_forbidden / missing error: a key not (validly) present
        else:
            continue
        path.append(part)
    return tuple(path)


def _describe(model: type[BaseModel], loc: tuple[Any, ...], kind: str, value: Any, msgs: list[str]) -> str:
    path = ".".join(str(p) for p in loc) or "(top level)"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{path}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{path}: required key is missing"
    return f"{path}: got {value!r}; allowed: " + " or ".join(msgs)


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, source: str) -> M:
    """Validate a parsed YAML document against model; every problem named by its key path."""
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping with an 'nnunet' section, got {type(data).__name__}"],
                          source)
    # An empty section (`paths:` with nothing under it) reads as null in YAML: treat it as all defaults.
    data = {k: ({} if v is None and k != "nnunet" else v) for k, v in data.items()}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # A Union reports once per member: merge those into one line per key path.
        grouped: dict[tuple[Any, ...], tuple[str, Any, list[str]]] = {}
        for err in exc.errors():
            loc = _key_path(tuple(err["loc"]), data)
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
            _kind, _value, msgs = grouped.setdefault(loc, (err["type"], err.get("input"), []))
            if msg not in msgs:
                msgs.append(msg)
        raise ConfigError([_describe(model, loc, *v) for loc, v in grouped.items()], source) from None


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate an already-parsed run.yaml document."""
    return validate(Config, data, source)


def read_document(path: Path) -> Any:
    """The YAML document in path (any YAML value); ConfigError naming the file when it cannot be read or parsed."""
    try:
        raw = read_bytes(path, MAX_CONFIG_BYTES, "config file")
    except OSError as exc:  # missing, unreadable, a directory or FIFO (never opened blocking), far too large
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: byte {exc.start} is 0x{raw[exc.start]:02x} ({exc.reason}); save the file "
                           "as UTF-8 (YAML's encoding)"], str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None


def load_config(path: Path) -> Config:
    """Read and validate run.yaml."""
    return parse_config(read_document(path), str(path))


def resolve_paths(cfg: RunSections, base: Path, environ: dict[str, str] | None = None) -> ResolvedPaths:
    """Fill nnU-Net folders from the environment; relative paths count from the config file's folder."""
    env = os.environ if environ is None else environ
    values: dict[str, Path | None] = {}
    problems = []
    for name in PATH_ENV_VARS:
        raw_value = getattr(cfg.paths, name) or env.get(name)
        values[name] = (base / raw_value).resolve() if raw_value else None
        if values[name] is None and name != "nnUNet_raw":
            problems.append(f"paths.{name}: not set in the config and ${name} is not in the environment")
    if problems:
        raise ConfigError(problems)
    pre, res = values["nnUNet_preprocessed"], values["nnUNet_results"]
    assert pre is not None and res is not None
    return ResolvedPaths(raw=values["nnUNet_raw"], preprocessed=pre, results=res)


def trainer_paths(cfg: Config, base: Path) -> list[Path]:
    """Custom trainer folders as absolute paths."""
    return [(base / p).resolve() for p in cfg.nnunet.trainer_paths]

"""What a run (run.yaml) or an experiment will still write to disk, per fold and in all, against the free space of
each file system it writes to (nnUNet_results, the prediction's output): for `check`.

Every figure is a `Part` with the words it is made of and its kind: measured from a file there, estimated, or an
upper bound (uncompressed arrays that nnU-Net writes compressed). What is already on disk of a figure (a fold's
checkpoints so far, its validation outputs) is subtracted: a finished fold needs nothing more. Nothing here reads
more than a few small files per dataset; no torch, no numpy. A damaged or unexpected value in them is a note
("cannot estimate X: what was wrong in which file; what was used instead"), never an exception.

- Checkpoints: a finished fold keeps checkpoint_final.pth and checkpoint_best.pth, and the supervisor's
  `checkpoint.snapshots` copies in supervisor/snapshots/; checkpoint_latest.pth exists only while the fold trains
  (nnU-Net's on_train_end deletes it), and so does the temporary copy of an atomic write (staging, cooperative
  saves): those two are counted for as many folds as train at once (a run.yaml: one; an experiment: its devices
  section, see `folds_at_once`). The size of one is that of an existing checkpoint of the same trainer, plans and
  configuration (any fold), else counted from the plans' network (`count_network`): float32 weights plus SGD's
  momentum buffer, 2 x 4 bytes a parameter, plus the pickled plans and logs.
- Validation: nnU-Net's final validation writes each validation case's segmentation (uint8) and, with --npz (the
  experiments' default, find_best ensembles from it), its softmax (float16, one channel per segmentation head) at
  the image's shape before cropping, read from dataset_fingerprint.json.
- Predictions: per input case a segmentation about the size of its first channel's file, and with probabilities the
  softmax; an experiment's prediction of what find_best chose writes each model's outputs (with probabilities when
  it may ensemble two), the ensemble and the postprocessed result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from supervisor.checkpoints.space import human
from supervisor.context import RunContext
from supervisor.predicted.cases import input_cases
from supervisor.preprocessed.cheap import config_value, load_json

if TYPE_CHECKING:  # the experiment imports preflight, which imports this: a type only, never at run time
    from supervisor.experiment.context import ExperimentContext

MEASURED, ESTIMATE, UPPER = "measured", "estimate", "upper bound"
# per fold: nnU-Net's training log, progress.png and debug.json, our events and attempt logs of an ordinary run
# (nnU-Net prints a few hundred bytes an epoch); not a trainer flooding its output up to the attempt logs' cap
LOG_BYTES = 16 * 2**20
OVERHEAD_BYTES = 256 * 2**10  # a checkpoint's pickled logging, zip headers, trainer fields (beside the plans)
WORKING_STATES = ("init", "starting", "running", "backoff", "stopping")  # a fold's state.json while supervised


@dataclass(frozen=True)
class Part:
    """One figure of what something will write: bytes in all, of it already on disk, how it was made."""

    label: str  # "checkpoints", "validation", "logs", "segmentations", ...
    bytes: int
    how: str
    kind: str = ESTIMATE  # MEASURED, ESTIMATE or UPPER
    present: int = 0

    @property
    def more(self) -> int:
        """Still to be written."""
        return max(0, self.bytes - self.present)

    def line(self) -> str:
        there = f" ({human(self.present)} there)" if self.present else ""
        return f"{self.label} {human(self.bytes)}{there}: {self.how}"


@dataclass(frozen=True)
class Need:
    """What one fold (or one prediction) will write, into `folder`."""

    name: str  # "3d_fullres/fold_0", "prediction"
    group: str  # its configuration ("nnUNetTrainer__nnUNetPlans/3d_fullres" in a study), or "prediction"
    folder: Path
    parts: tuple[Part, ...] = ()
    done: str | None = None  # why it writes nothing more ("finished")

    @property
    def more(self) -> int:
        return 0 if self.done else sum(p.more for p in self.parts)

    @property
    def firm(self) -> int:
        """Still to be written, leaving the upper bounds out."""
        return 0 if self.done else sum(p.more for p in self.parts if p.kind != UPPER)


@dataclass(frozen=True)
class Space:
    """One file system: the folder measured, what is free there, and what goes to it."""

    probe: Path
    free: int
    needs: tuple[Need, ...]

    @property
    def more(self) -> int:
        return sum(n.more for n in self.needs)

    @property
    def firm(self) -> int:
        return sum(n.firm for n in self.needs)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(n.group for n in self.needs))

    def short(self) -> bool:
        """Clearly too little: even without the upper bounds it does not fit, or it needs twice what is free."""
        return self.firm > self.free or self.more > 2 * self.free

    def tight(self) -> bool:
        return not self.short() and self.more > self.free

    def upper_what(self) -> str:
        """What the upper bounds here are made of."""
        labels = {p.label for n in self.needs if not n.done for p in n.parts if p.kind == UPPER and p.more}
        what = ["uncompressed arrays nnU-Net writes compressed"] if labels - {TRAINING} else []
        if TRAINING in labels:
            what.append("checkpoint_latest.pth and a temporary for every fold that may train at once")
        return ", and ".join(what) or "none"


@dataclass(frozen=True)
class DiskEstimate:
    """What a run or an experiment will still write, per fold, and against each file system's free space."""

    needs: tuple[Need, ...]
    spaces: tuple[Space, ...]
    notes: tuple[str, ...] = ()  # what could not be estimated, and why

    @property
    def more(self) -> int:
        return sum(n.more for n in self.needs)

    def lines(self) -> list[str]:
        """`check`'s disk: lines: per file system what is needed and free, per configuration what a fold is made of."""
        out = []
        for s in self.spaces:
            upper = s.more - s.firm
            of = f" (~{human(upper)} of it upper bounds)" if upper else ""
            out.append(f"disk: {s.probe}: ~{human(s.more)} still to be written{of}, {human(s.free)} free; for "
                       f"{', '.join(s.groups)} (an estimate)")
        for group, needs in _grouped(self.needs).items():
            todo = [n for n in needs if not n.done]
            if group == "prediction":
                out += [f"disk: {n.name}: ~{human(n.more)} into {n.folder}: " + "; ".join(p.line() for p in n.parts)
                        for n in todo]
                continue
            finished = len(needs) - len(todo)
            if not todo:
                out.append(f"disk: {group}: {finished} fold(s), all finished: nothing more to write")
                continue
            done = f" ({finished} finished)" if finished else ""
            first = todo[0]
            text = "; ".join(p.line() for p in first.parts if p.label != TRAINING)
            training = [p for n in todo for p in n.parts if p.label == TRAINING]
            if training:
                upper = sum(p.kind == UPPER for p in training)
                bound = f", {upper} of them as an upper bound" if upper else ""
                text += f"; and for {len(training)} of these {len(todo)} fold(s){bound}, {training[0].line()}"
            out.append(f"disk: {group}: ~{human(sum(n.more for n in todo))} for {len(todo)} fold(s){done}; "
                       f"{first.name}: {text}")
        return out + [f"disk: {n}" for n in self.notes]

    def problems(self) -> list[str]:
        return [f"disk: not enough free space in {s.probe} for {', '.join(s.groups)}: ~{human(s.more)} estimated to "
                f"be written (~{human(s.firm)} without the upper bounds), {human(s.free)} free: short by "
                f"~{human(max(s.more, s.firm) - s.free)} (an estimate; `nnunet-supervise clean` frees what finished "
                "folds no longer need)" for s in self.spaces if s.short()]

    def warnings(self) -> list[str]:
        return [f"disk: {s.probe}: ~{human(s.more)} estimated to be written, {human(s.free)} free: it fits only if "
                f"the upper bounds (~{human(s.more - s.firm)}: {s.upper_what()}) are high by "
                f"~{human(s.more - s.free)} or more" for s in self.spaces if s.tight()]


def _grouped(needs: Iterable[Need]) -> dict[str, list[Need]]:
    out: dict[str, list[Need]] = {}
    for n in needs:
        out.setdefault(n.group, []).append(n)
    return out


# ---- values as the files have them ----


def _shown(value: Any) -> str:
    """A value as its JSON file has it, shortened: 1, "x", [32, null, 24]."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value: Any) -> int | None:
    """A whole number as JSON writes one (2, or 2.0), else None (true, "2", null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _wholes(value: Any, least: int = 0) -> list[int] | None:
    """A non-empty list of whole numbers of at least `least`, else None."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    out = [_whole(v) for v in value]
    return None if any(v is None or v < least for v in out) else [v for v in out if v is not None]


# ---- the network's size, from the plans ----


class _Uncountable(ValueError):
    """A value of the plans' arch_kwargs this count cannot use (its message says which and why)."""


def _vol(kernel: Any, ndim: int, what: str) -> int:
    sizes = [kernel] * ndim if _whole(kernel) is not None else kernel
    dims = _wholes(sizes, least=1)
    if dims is None:
        raise _Uncountable(f"{what} is {_shown(kernel)}, not a whole number or a list of them")
    return math.prod(dims)


def _voxels(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 10**6 else f"{n / 1e3:.1f} k"


def _per_stage(arch_kwargs: Mapping[str, Any], key: str, n: int, default: int) -> list[int]:
    value = arch_kwargs.get(key)
    if value is None:
        return [default] * n
    single = _whole(value)
    if single is not None and single >= 0:
        return [single] * n
    values = _wholes(value)
    if values is None or len(values) < n:
        raise _Uncountable(f"{key} is {_shown(value)}, not a whole number or a list of one per stage ({n})")
    return values[:n]


def count_network(arch_kwargs: Mapping[str, Any], in_channels: int, heads: int,
                  where: str = "arch_kwargs") -> tuple[int | None, str | None, list[str]]:
    """(parameters, why not, what was assumed) for dynamic_network_architectures' PlainConvUNet, or
    ResidualEncoderUNet (plans with `n_blocks_per_stage`), as nnU-Net builds them from the plans (deep supervision's
    segmentation layers included, they are in the checkpoint). Parameters None, and why (naming `where` and the
    key), when the plans do not describe such a network; never an exception, whatever the values' types."""
    features = _wholes(arch_kwargs.get("features_per_stage"), least=1)
    if features is None:
        return None, (f"{where}.features_per_stage is {_shown(arch_kwargs.get('features_per_stage'))}, not a list "
                      "of whole numbers"), []
    n = len(features)
    kernels, strides = arch_kwargs.get("kernel_sizes"), arch_kwargs.get("strides")
    for key, value in (("kernel_sizes", kernels), ("strides", strides)):
        if not isinstance(value, list) or len(value) < n:
            return None, f"{where}.{key} is {_shown(value)}, not a list of one entry per stage ({n})", []
    assert isinstance(kernels, list) and isinstance(strides, list)
    assumed = []
    norm_kwargs = arch_kwargs.get("norm_op_kwargs")
    if norm_kwargs is None:
        norm_kwargs = {}
    elif not isinstance(norm_kwargs, Mapping):
        assumed.append(f"cannot estimate the norm layers' parameters: {where}.norm_op_kwargs is {_shown(norm_kwargs)}, "
                       "not a mapping; affine norms (nnU-Net's default) assumed")
        norm_kwargs = {}
    try:
        ndim = len(kernels[0]) if isinstance(kernels[0], (list, tuple)) else \
            3 if "3d" in str(arch_kwargs.get("conv_op", "")).lower() else 2
        bias = bool(arch_kwargs.get("conv_bias", False))
        norm = 2 if arch_kwargs.get("norm_op") and norm_kwargs.get("affine", True) else 0
        f = features

        def conv(cin: int, cout: int, kvol: int, with_bias: bool = bias) -> int:
            return kvol * cin * cout + (cout if with_bias else 0) + norm * cout

        def kvol(s: int) -> int:
            return _vol(kernels[s], ndim, f"{where}.kernel_sizes[{s}]")

        total = 0
        if "n_blocks_per_stage" in arch_kwargs:  # residual encoder: a stem, then basic blocks (two convs and a skip)
            blocks = _per_stage(arch_kwargs, "n_blocks_per_stage", n, 1)
            total += conv(in_channels, f[0], kvol(0))
            prev = f[0]
            for s in range(n):
                kv = kvol(s)
                for b in range(blocks[s]):
                    cin = prev if b == 0 else f[s]
                    total += conv(cin, f[s], kv) + conv(f[s], f[s], kv)
                    if cin != f[s]:  # the skip's 1x1 projection, no bias
                        total += conv(cin, f[s], 1, with_bias=False)
                    prev = f[s]
        else:
            convs = _per_stage(arch_kwargs, "n_conv_per_stage", n, 2)
            prev = in_channels
            for s in range(n):
                kv = kvol(s)
                for c in range(convs[s]):
                    total += conv(prev if c == 0 else f[s], f[s], kv)
                    prev = f[s]
        decoder = _per_stage(arch_kwargs, "n_conv_per_stage_decoder", n - 1, 2) if n > 1 else []
        for j in range(n - 1, 0, -1):  # from the bottom up: transposed conv, convs over the concatenation, seg layer
            below, skip = f[j], f[j - 1]
            total += _vol(strides[j], ndim, f"{where}.strides[{j}]") * below * skip + (skip if bias else 0)
            kv = kvol(j - 1)
            for c in range(decoder[n - 1 - j]):
                total += conv(2 * skip if c == 0 else skip, skip, kv)
            total += skip * heads + heads
    except _Uncountable as exc:
        return None, str(exc), assumed
    except Exception as exc:  # a shape of the values not foreseen above: not countable, said so, never raised
        return None, f"{where} cannot be counted ({type(exc).__name__}: {exc})", assumed
    return total, None, assumed


def count_parameters(arch_kwargs: Mapping[str, Any], in_channels: int, heads: int) -> int | None:
    """Trainable parameters of the network the plans' arch_kwargs describe (see count_network); None when they do
    not describe one this count knows."""
    return count_network(arch_kwargs, in_channels, heads)[0]


def checkpoint_bytes_from_plans(params: int, plans_bytes: int = 0) -> int:
    """One checkpoint of a network of `params` parameters: float32 weights and SGD's momentum buffer (nnU-Net's
    optimizer), the plans pickled in its init_args, and its logging and zip overhead."""
    return 8 * params + plans_bytes + OVERHEAD_BYTES


@dataclass(frozen=True)
class DatasetFacts:
    """What the estimate reads of one preprocessed dataset and plans, once. `problems`: what could not be read or
    was not of the expected kind, each a note "cannot estimate X: what was wrong in which file; what was used
    instead" (never an exception: a damaged file is check's other lines' to name as a problem)."""

    plans: Mapping[str, Any] | None
    plans_bytes: int
    channels: int
    heads: int
    case_voxels: tuple[int, ...]  # each readable training case's voxels before cropping (dataset_fingerprint.json)
    voxels_how: str
    splits: list[Any] | None
    file_ending: str | None
    problems: tuple[str, ...] = ()
    plans_file: str = "nnUNetPlans.json"
    cases: int = 0  # training cases the fingerprint lists (also those whose shape is unreadable)

    @classmethod
    def from_documents(cls, plans: Any, dataset_json: Any, plans_file: str, plans_bytes: int = 0,
                       plans_why: str | None = None, dataset_why: str | None = None) -> DatasetFacts:
        """From the plans and dataset.json already read (None: absent or unreadable, the `_why` saying why): what
        one checkpoint's estimate needs, nothing more read."""
        problems = []
        if not isinstance(plans, dict):
            wrong = plans_why or (f"{plans_file} is missing or unreadable" if plans is None else
                                  f"{plans_file} is {_shown(plans)}, not an object")
            problems.append(f"cannot estimate from the plans: {wrong}; nothing is counted from them")
            plans = None
        channels, heads, ending, more = _dataset_json_facts(dataset_json, dataset_why)
        return cls(plans, plans_bytes, channels, heads, (), "", None, ending, tuple(problems + more), plans_file)

    @classmethod
    def read(cls, dataset_dir: Path, plans_name: str) -> DatasetFacts:
        """The plans, dataset.json, dataset_fingerprint.json and splits_final.json of a preprocessed dataset."""
        plans_file = f"{plans_name}.json"
        plans, plans_why = load_json(dataset_dir / plans_file)
        if plans is None and plans_why is None:
            plans_why = f"{plans_file} not found in {dataset_dir}"
        try:
            plans_bytes = (dataset_dir / plans_file).stat().st_size
        except OSError:
            plans_bytes = 0
        ds, ds_why = load_json(dataset_dir / "dataset.json")
        if ds is None and ds_why is None:
            ds_why = f"dataset.json not found in {dataset_dir}"
        base = cls.from_documents(plans, ds, plans_file, plans_bytes, plans_why, ds_why)
        fingerprint, fp_why = load_json(dataset_dir / "dataset_fingerprint.json")
        voxels, how, cases, problems = _case_voxels(fingerprint, fp_why, dataset_dir)
        splits, splits_why = load_json(dataset_dir / "splits_final.json")
        if splits_why or (splits is not None and not isinstance(splits, list)):
            problems.append("cannot estimate the validation cases per fold: "
                            + (splits_why or f"splits_final.json is {_shown(splits)}, not a list of folds")
                            + "; a fifth of the cases per fold assumed")
        return replace(base, case_voxels=voxels, voxels_how=how, cases=cases, problems=base.problems + tuple(problems),
                       splits=splits if isinstance(splits, list) else None)

    def mean_voxels(self) -> int:
        return sum(self.case_voxels) // len(self.case_voxels) if self.case_voxels else 0

    def validation_cases(self, fold: Union[int, str]) -> tuple[int, str]:
        """How many cases a fold's final validation predicts, and from what."""
        n = self.cases or len(self.case_voxels)
        if fold == "all":
            return n, "fold all validates on every training case"
        if self.splits is None:
            return math.ceil(n / 5), "a fifth of the cases: no usable splits_final.json yet"
        entry = self.splits[fold] if isinstance(fold, int) and 0 <= fold < len(self.splits) else None
        if isinstance(entry, dict) and isinstance(entry.get("val"), list):
            return len(entry["val"]), "splits_final.json"
        return math.ceil(n / 5), f"a fifth of the cases: splits_final.json has no fold {fold} with a list of val cases"


def _dataset_json_facts(ds: Any, why: str | None) -> tuple[int, int, str | None, list[str]]:
    """(input channels, segmentation heads, file ending, notes) from dataset.json's content (None: not read, why)."""
    if not isinstance(ds, dict):
        wrong = why or ("dataset.json is missing or unreadable" if ds is None else
                        f"dataset.json is {_shown(ds)}, not an object")
        return 1, 2, None, [f"cannot estimate the input channels and segmentation heads: {wrong}; 1 channel and 2 "
                            "heads assumed, and no prediction counted"]
    notes = []
    key = "channel_names" if "channel_names" in ds else "modality"
    names = ds.get(key)
    if isinstance(names, (dict, list)) and names:
        channels = len(names)
    else:
        channels = 1
        notes.append(f"cannot estimate the input channels: dataset.json's {key} is "
                     f"{_shown(names) if key in ds else 'missing'}, not a mapping of channels; 1 channel assumed")
    labels = ds.get("labels")
    heads = segmentation_heads(labels)
    if not isinstance(labels, dict) or not labels:
        notes.append(f"cannot estimate the segmentation heads: dataset.json's labels is "
                     f"{_shown(labels) if 'labels' in ds else 'missing'}, not a mapping of labels; {heads} heads "
                     "assumed")
    ending = ds.get("file_ending")
    return channels, heads, ending if isinstance(ending, str) else None, notes


MAX_CASE_VOXELS = 2**40  # more is not a shape a fingerprint of a real case holds


def _case_voxels(fingerprint: Any, why: str | None, dataset_dir: Path) -> tuple[tuple[int, ...], str, int, list[str]]:
    """(each readable case's voxels before cropping, how, the cases listed, notes) from dataset_fingerprint.json."""
    what, instead = "the validation outputs and probabilities", "they are not counted"
    if why or not isinstance(fingerprint, dict):
        wrong = why or (f"no dataset_fingerprint.json in {dataset_dir}" if fingerprint is None else
                        f"dataset_fingerprint.json is {_shown(fingerprint)}, not an object")
        return (), "", 0, [f"cannot estimate {what}: {wrong}; {instead}"]
    raw = fingerprint.get("shapes_after_crop")
    if not isinstance(raw, list) or not raw:
        return (), "", 0, [f"cannot estimate {what}: dataset_fingerprint.json's shapes_after_crop is "
                           f"{_shown(raw) if 'shapes_after_crop' in fingerprint else 'missing'}, not a list of the "
                           f"cases' shapes; {instead}"]
    notes = []
    rel = fingerprint.get("median_relative_size_after_cropping")
    scale = 1.0
    if isinstance(rel, (int, float)) and not isinstance(rel, bool) and 0 < rel <= 1:
        scale = 1 / rel
    elif rel is not None:
        notes.append("cannot estimate the cases' shape before cropping: dataset_fingerprint.json's "
                     f"median_relative_size_after_cropping is {_shown(rel)}, not a fraction in (0, 1]; the shapes "
                     "after cropping used")
    voxels, bad = [], []
    for i, shape in enumerate(raw):
        dims = _wholes(shape)
        count = math.prod(dims) if dims is not None else None
        if count is None or count > MAX_CASE_VOXELS or count * scale > MAX_CASE_VOXELS:
            bad.append((i, shape))
        else:
            voxels.append(int(count * scale))
    if bad:
        i, shape = bad[0]
        wrong = (f"dataset_fingerprint.json's shapes_after_crop[{i}] is {_shown(shape)}, not a list of whole numbers "
                 "(a case's shape)" + (f"; {len(bad)} of its {len(raw)} entries are not" if len(bad) > 1 else ""))
        if not voxels:
            return (), "", len(raw), [*notes, f"cannot estimate {what}: {wrong}; {instead}"]
        notes.append(f"cannot estimate {what} of every case: {wrong}; the mean of the other {len(voxels)} case(s) used")
    how = "dataset_fingerprint.json's shapes after cropping" + (
        f", / {rel:.2f} (its median relative size after cropping) for the shape before" if scale != 1 else "")
    return tuple(voxels), how, len(raw), notes


def segmentation_heads(labels: Any) -> int:
    """The softmax's channels, as nnU-Net's LabelManager counts them: every label but `ignore`, or with regions
    (a label naming several values) one per foreground region."""
    if not isinstance(labels, dict) or not labels:
        return 2
    own = {k: v for k, v in labels.items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) for v in own.values()):
        return max(1, len(own) - 1)
    return max(1, len(own))


# ---- one checkpoint, measured or counted ----

# what is not counted without a checkpoint's size: the same words from check's estimate and the launch's room check,
# so that check says it once
CHECKPOINTS_UNCOUNTED = "no checkpoint is counted (neither the room for the next launch nor what the folds will write)"


def one_checkpoint(model_dir: Path, configuration: str, facts: DatasetFacts, notes: list[str] | None = None,
                   instead: str = CHECKPOINTS_UNCOUNTED) -> tuple[int, str, str] | None:
    """(bytes, how, kind) of one checkpoint of the trainer/plans/configuration folder model_dir: the largest that
    exists there (any fold), else counted from the plans' network; None when neither can be had. Into `notes`: why
    the plans could not be counted (ending with `instead`), or what was assumed of them."""
    sizes = []
    for fold in _children(model_dir):
        if not fold.name.startswith("fold_"):
            continue
        for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
            size = regular_size(fold / name)
            if size:
                sizes.append((size, f"{fold.name}/{name}"))
    if sizes:
        size, which = max(sizes)
        return size, f"the size of {which}", MEASURED
    if facts.plans is None:  # facts.problems says why
        return None
    said = notes if notes is not None else []
    where = f"{facts.plans_file}'s {configuration}"
    head = f"cannot estimate a checkpoint of {configuration} (none exists yet to measure)"
    arch = config_value(facts.plans, configuration, "architecture")
    kwargs = arch.get("arch_kwargs") if isinstance(arch, dict) else None
    if not isinstance(kwargs, dict):
        wrong = (f"{where} has no architecture" if arch is None else
                 f"{where} architecture is {_shown(arch)}, not an object" if not isinstance(arch, dict) else
                 f"{where} architecture.arch_kwargs is {_shown(kwargs)}, not an object")
        said.append(f"{head}: {wrong}; {instead}")
        return None
    params, why, assumed = count_network(kwargs, facts.channels, facts.heads, f"{where} architecture.arch_kwargs")
    said += assumed
    if params is None:
        said.append(f"{head}: {why}; {instead}")
        return None
    return (checkpoint_bytes_from_plans(params, facts.plans_bytes),
            f"an estimate from the plans' network: {params / 1e6:.2f} M parameters x 8 bytes (float32 weights and SGD "
            "momentum) and the plans and logs", ESTIMATE)


def regular_size(path: Path) -> int:
    """A regular file's size, not following a symbolic link (0: none there, or not a regular file)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def tree_size(folder: Path, limit: int = 100_000) -> int:
    """Bytes of the regular files under folder (symbolic links not followed; at most `limit` entries)."""
    total, seen = 0, 0
    for root, _, files in os.walk(folder, followlinks=False):
        for name in files:
            total += regular_size(Path(root) / name)
            seen += 1
        if seen > limit:
            break
    return total


# ---- a fold ----

TRAINING = "while training"  # the label of checkpoint_latest.pth and an atomic write's temporary


def fold_need(ctx: RunContext, facts: DatasetFacts, group: str | None = None) -> tuple[Need, list[str]]:
    """What one fold will still write (nothing once finished), and what could not be estimated. Its checkpoints
    are two parts: what stays once it finished (final, best, our snapshots), and what exists only while it trains
    (checkpoint_latest.pth, which nnU-Net's on_train_end deletes, and the temporary copy of an atomic write); the
    callers count the second for as many folds as train at once."""
    layout = ctx.layout
    nn = ctx.config.nnunet
    name = f"{nn.configuration}/fold_{nn.fold}"
    group = group or nn.configuration
    if layout.is_finished():
        return Need(name, group, layout.fold_dir, done="finished"), []
    notes: list[str] = []
    parts = []
    one = one_checkpoint(layout.fold_dir.parent, nn.configuration, facts, notes)
    if one is not None:
        size, how, _ = one
        snaps = ctx.config.checkpoint.snapshots
        kept = 2 + snaps
        present = sum(regular_size(layout.checkpoint(n)) for n in ("checkpoint_final.pth", "checkpoint_best.pth"))
        present += tree_size(layout.supervisor_dir / "snapshots")
        parts.append(Part("checkpoints", kept * size,
                          f"{kept} x {human(size)}, what stays once it finished: final, best and {snaps} snapshot(s) "
                          f"(checkpoint.snapshots); one is {how}", ESTIMATE, present))
        parts.append(Part(TRAINING, 2 * size,
                          f"2 x {human(size)}: checkpoint_latest.pth (nnU-Net deletes it when the fold finishes) and "
                          "the temporary copy of an atomic write", ESTIMATE,
                          regular_size(layout.checkpoint("checkpoint_latest.pth"))))
    if facts.case_voxels:  # else facts.problems says why not
        cases, whence = facts.validation_cases(nn.fold)
        voxels = facts.mean_voxels()
        npz = "--npz" in nn.extra_args
        per_case = voxels + (2 * facts.heads * voxels if npz else 0)
        softmax = f" and, with --npz, a float16 softmax of {facts.heads} channel(s)" if npz else ""
        what = (f"{cases} case(s) ({whence}) of ~{_voxels(voxels)} voxels (the mean of {facts.voxels_how}): a uint8 "
                f"segmentation each{softmax}, uncompressed (nnU-Net compresses them)")
        parts.append(Part("validation", cases * per_case, what, UPPER, tree_size(layout.fold_dir / "validation")))
    cap = ctx.config.process.attempt_log_max_bytes
    flood = (f"each attempt log is cut at {human(3 * cap // 2)} (process.attempt_log_max_mb), which only a trainer "
             "flooding its output reaches: not counted" if cap else
             "attempt logs are not cut (process.attempt_log_max_mb: null): a trainer flooding its output is not "
             "counted")
    parts.append(Part("logs", LOG_BYTES, "nnU-Net's training log, progress.png and debug.json, our events and attempt "
                                         "logs as an ordinary run writes them (nnU-Net prints a few hundred bytes an "
                                         f"epoch); {flood}", ESTIMATE))
    return Need(name, group, layout.fold_dir, tuple(parts)), notes


def at_once(needs: Sequence[Need], firm: int, most: int | None, why: str) -> tuple[Need, ...]:
    """The needs with the TRAINING part (latest and a temporary) kept for as many unfinished folds as train at once:
    `firm` of them (those with the most of it still to write) as an estimate, up to `most` in all (None: every
    unfinished fold) as an upper bound, and dropped from the others (each fold's latest exists only while it trains)."""
    todo = [i for i, n in enumerate(needs) if not n.done and any(p.label == TRAINING for p in n.parts)]
    order = sorted(todo, key=lambda i: -sum(p.more for p in needs[i].parts if p.label == TRAINING))
    firm_n = min(firm, len(todo))
    most_n = len(todo) if most is None else max(firm_n, min(most, len(todo)))
    if len(todo) == 1 and firm_n == 1:
        said = f"; counted for this fold ({why})"
    elif firm_n == len(todo):
        said = f"; counted for each of the {firm_n} unfinished folds: they can all train at once ({why})"
    else:
        said = f"; counted for {firm_n} of the {len(todo)} unfinished folds, as many as train at once ({why})"
    if most_n > firm_n:
        said += f", and for {most_n - firm_n} more as an upper bound"
    out = list(needs)
    for rank, i in enumerate(order):
        kind = ESTIMATE if rank < firm_n else UPPER
        parts = tuple(p if p.label != TRAINING else replace(p, kind=kind, how=p.how + said)
                      for p in needs[i].parts if p.label != TRAINING or rank < most_n)
        out[i] = replace(needs[i], parts=parts)
    return tuple(out)


def folds_at_once(exp: ExperimentContext) -> tuple[int, int | None, str]:
    """(folds that train at once at least, at most (None: up to every unfinished fold), why) under the experiment's
    devices section, as supervisor.experiment.devices.pool places them, without asking NVML."""
    spec = exp.spec
    d = spec.experiment.devices
    if spec.nnunet.device != "cuda":
        return d.slots, d.slots, f"experiment.devices.slots: {d.slots}"
    gpus = None if d.gpus == "auto" else len(d.gpus)
    if isinstance(d.per_gpu, int):
        if gpus is not None:
            return gpus * d.per_gpu, gpus * d.per_gpu, f"{gpus} GPU(s) x experiment.devices.per_gpu {d.per_gpu}"
        return d.per_gpu, None, (f"experiment.devices.per_gpu {d.per_gpu} on each GPU NVML finds, at least one; "
                                 "how many it finds is not asked here")
    listed = f"{gpus} GPU(s) listed" if gpus is not None else "gpus: auto"
    return 1, None, (f"{listed}, per_gpu: auto packs folds by GPU memory, which is not asked here: at least one fold "
                     "trains")


# ---- predictions ----


def prediction_need(name: str, input_dir: Path, output: Path, facts: DatasetFacts, probabilities: bool,
                    models: int = 1, combined: int = 0,
                    present_in: Sequence[Path] = ()) -> tuple[Need | None, list[str]]:
    """What a prediction of input_dir writes: `models` models' segmentations (with their softmax when
    `probabilities`), and `combined` more sets of segmentations (the ensemble, the postprocessed result)."""
    if facts.file_ending is None:
        return None, [f"cannot estimate the {name}: dataset.json names no file_ending (a string); it is not counted"]
    try:
        cases, _ = input_cases(input_dir, facts.file_ending)
    except OSError as exc:
        return None, [f"{name}: not estimated ({input_dir} cannot be listed: {exc.strerror or exc})"]
    if not cases:
        return None, [f"{name}: no input cases in {input_dir} yet: not estimated"]
    firsts = sum(regular_size(files[0]) for files in cases.values())
    sets = models + combined
    parts = [Part("segmentations", sets * firsts,
                  f"{sets} set(s) of {len(cases)} case(s), each about its first channel's file "
                  f"({human(firsts)} in all; an upper bound for a segmentation of the same image, roughly)", UPPER)]
    if probabilities and facts.mean_voxels():
        voxels = facts.mean_voxels()
        parts.append(Part("probabilities", models * len(cases) * 2 * facts.heads * voxels,
                          f"{models} model(s) x {len(cases)} case(s): a float16 softmax of {facts.heads} channel(s) "
                          f"of ~{_voxels(voxels)} voxels (the training cases' mean), uncompressed", UPPER))
    present = sum(tree_size(p) for p in present_in)
    if present:
        first, *rest = parts
        parts = [replace(first, present=min(present, first.bytes)), *rest]
    return Need(name, "prediction", output, tuple(parts)), []


# ---- the whole ----


def estimate_run(ctx: RunContext) -> DiskEstimate:
    """One fold's run.yaml: the fold, and its predict section's prediction when both input and output are set."""
    facts = DatasetFacts.read(ctx.paths.preprocessed / ctx.dataset_name, ctx.config.nnunet.plans)
    need, notes = fold_need(ctx, facts)
    needs = list(at_once([need], 1, 1, "a run.yaml trains one fold"))
    p = ctx.config.predict
    if p.input is not None and p.output is not None:
        out = (ctx.config_path.parent / p.output).resolve()
        pred, more = prediction_need("prediction", (ctx.config_path.parent / p.input).resolve(), out, facts,
                                     p.save_probabilities, present_in=[out])
        notes += more
        needs += [pred] if pred else []
    return DiskEstimate(tuple(needs), spaces(needs), tuple(dict.fromkeys([*facts.problems, *notes])))


def estimate_experiment(exp: ExperimentContext) -> DiskEstimate:
    """Every cell of an experiment, and its predict section's prediction of what find_best chooses (two models with
    probabilities when it may choose an ensemble)."""
    facts_of: dict[str, DatasetFacts] = {}
    needs: list[Need] = []
    notes: list[str] = []
    for cell in exp.cells:
        _, plans = exp.trainer_plans(cell)
        if plans not in facts_of:
            facts_of[plans] = DatasetFacts.read(exp.preprocessed, plans)
            notes += list(facts_of[plans].problems)
        try:
            ctx = exp.run(cell)
        except Exception as exc:  # a cell that does not resolve is check's other lines' to say
            notes.append(f"cannot estimate {cell.name}: it does not resolve ({exc}); it is not counted")
            continue
        group = cell.configuration if cell.study is None else f"{cell.study}/{cell.configuration}"
        need, more = fold_need(ctx, facts_of[plans], group)
        needs.append(replace(need, name=cell.name))
        notes += more
    firm, most, why = folds_at_once(exp)
    needs = list(at_once(needs, firm, most, why))
    spec = exp.spec
    if exp.predicts and spec.predict.input is not None:
        layout = exp.predict_layout()
        candidates = {(c.trainer, c.plans, c.configuration) for c in exp.cells}
        ensemble = spec.experiment.find_best and len(candidates) > 1
        facts = facts_of.get(spec.plans_names[0]) or DatasetFacts.read(exp.preprocessed, spec.plans_names[0])
        pred, more = prediction_need("prediction", (exp.config_path.parent / spec.predict.input).resolve(),
                                     layout.output, facts, probabilities=ensemble, models=2 if ensemble else 1,
                                     combined=2 if ensemble else 1, present_in=[layout.output])
        notes += more
        needs += [pred] if pred else []
    return DiskEstimate(tuple(needs), spaces(needs), tuple(dict.fromkeys(notes)))


def _existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def spaces(needs: Sequence[Need]) -> tuple[Space, ...]:
    """The needs grouped by the file system each goes to (the device of its nearest existing folder)."""
    by_dev: dict[int, tuple[Path, list[Need]]] = {}
    for n in needs:
        probe = _existing(n.folder)
        try:
            dev = os.stat(probe).st_dev
        except OSError:
            continue
        by_dev.setdefault(dev, (probe, []))[1].append(n)
    out = []
    for probe, group in by_dev.values():
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            continue
        out.append(Space(_common(probe, [_existing(n.folder) for n in group]), free, tuple(group)))
    return tuple(out)


def _common(first: Path, probes: list[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(p) for p in probes]))
    except ValueError:
        return first


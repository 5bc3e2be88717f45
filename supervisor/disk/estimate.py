"""What a run (run.yaml) or an experiment will still write to disk, per fold and in all, against the free space of
each file system it writes to (nnUNet_results, the prediction's output): for `check`.

Every figure is a `Part` with the words it is made of and its kind: measured from a file there, estimated, or an
upper bound (uncompressed arrays that nnU-Net writes compressed). What is already on disk of a figure (a fold's
checkpoints so far, its validation outputs) is subtracted: a finished fold needs nothing more. Nothing here reads
more than a few small files per dataset; no torch, no numpy.

- Checkpoints: nnU-Net keeps checkpoint_latest.pth, checkpoint_best.pth and checkpoint_final.pth per fold; the
  supervisor adds `checkpoint.snapshots` copies in supervisor/snapshots/ and, while one is written atomically
  (staging, cooperative saves), a temporary copy beside it. The size of one is that of an existing checkpoint of the
  same trainer, plans and configuration (any fold), else counted from the plans' network (`count_parameters`):
  float32 weights plus SGD's momentum buffer, 2 x 4 bytes a parameter, plus the pickled plans and logs.
- Validation: nnU-Net's final validation writes each validation case's segmentation (uint8) and, with --npz (the
  experiments' default, find_best ensembles from it), its softmax (float16, one channel per segmentation head) at
  the image's shape before cropping, read from dataset_fingerprint.json.
- Predictions: per input case a segmentation about the size of its first channel's file, and with probabilities the
  softmax; an experiment's prediction of what find_best chose writes each model's outputs (with probabilities when
  it may ensemble two), the ensemble and the postprocessed result.
"""

from __future__ import annotations

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
LOG_BYTES = 16 * 2**20  # nnU-Net's training log and progress.png, our events and attempt logs, per fold
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
            out.append(f"disk: {group}: ~{human(sum(n.more for n in todo))} for {len(todo)} fold(s){done}; "
                       f"{first.name}: " + "; ".join(p.line() for p in first.parts))
        return out + [f"disk: {n}" for n in self.notes]

    def problems(self) -> list[str]:
        return [f"disk: not enough free space in {s.probe} for {', '.join(s.groups)}: ~{human(s.more)} estimated to "
                f"be written (~{human(s.firm)} without the upper bounds), {human(s.free)} free: short by "
                f"~{human(max(s.more, s.firm) - s.free)} (an estimate; `nnunet-supervise clean` frees what finished "
                "folds no longer need)" for s in self.spaces if s.short()]

    def warnings(self) -> list[str]:
        return [f"disk: {s.probe}: ~{human(s.more)} estimated to be written, {human(s.free)} free: it fits only if "
                f"the upper bounds (~{human(s.more - s.firm)}: uncompressed arrays nnU-Net writes compressed) are "
                f"high by ~{human(s.more - s.free)} or more" for s in self.spaces if s.tight()]


def _grouped(needs: Iterable[Need]) -> dict[str, list[Need]]:
    out: dict[str, list[Need]] = {}
    for n in needs:
        out.setdefault(n.group, []).append(n)
    return out


# ---- the network's size, from the plans ----


def _vol(kernel: Any, ndim: int) -> int:
    if isinstance(kernel, (list, tuple)):
        return math.prod(int(k) for k in kernel)
    return int(int(kernel) ** ndim)


def _voxels(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 10**6 else f"{n / 1e3:.1f} k"


def _per_stage(value: Any, n: int, default: int) -> list[int]:
    if isinstance(value, (list, tuple)) and len(value) >= n:
        return [int(v) for v in value[:n]]
    return [int(value) if isinstance(value, int) else default] * n


def count_parameters(arch_kwargs: Mapping[str, Any], in_channels: int, heads: int) -> int | None:
    """Trainable parameters of dynamic_network_architectures' PlainConvUNet, or ResidualEncoderUNet (plans with
    `n_blocks_per_stage`), as nnU-Net builds them from the plans (deep supervision's segmentation layers included,
    they are in the checkpoint); None when the plans do not describe such a network."""
    features = arch_kwargs.get("features_per_stage")
    kernels, strides = arch_kwargs.get("kernel_sizes"), arch_kwargs.get("strides")
    if not isinstance(features, list) or not features or not isinstance(kernels, list) \
            or not isinstance(strides, list) or len(kernels) < len(features) or len(strides) < len(features):
        return None
    try:
        f = [int(x) for x in features]
        n = len(f)
        ndim = len(kernels[0]) if isinstance(kernels[0], (list, tuple)) else \
            3 if "3d" in str(arch_kwargs.get("conv_op", "")).lower() else 2
        bias = bool(arch_kwargs.get("conv_bias", False))
        norm_kwargs = arch_kwargs.get("norm_op_kwargs") or {}
        norm = 2 if arch_kwargs.get("norm_op") and norm_kwargs.get("affine", True) else 0

        def conv(cin: int, cout: int, kvol: int, with_bias: bool = bias) -> int:
            return kvol * cin * cout + (cout if with_bias else 0) + norm * cout

        total = 0
        if "n_blocks_per_stage" in arch_kwargs:  # residual encoder: a stem, then basic blocks (two convs and a skip)
            blocks = _per_stage(arch_kwargs["n_blocks_per_stage"], n, 1)
            total += conv(in_channels, f[0], _vol(kernels[0], ndim))
            prev = f[0]
            for s in range(n):
                kv = _vol(kernels[s], ndim)
                for b in range(blocks[s]):
                    cin = prev if b == 0 else f[s]
                    total += conv(cin, f[s], kv) + conv(f[s], f[s], kv)
                    if cin != f[s]:  # the skip's 1x1 projection, no bias
                        total += conv(cin, f[s], 1, with_bias=False)
                    prev = f[s]
        else:
            convs = _per_stage(arch_kwargs.get("n_conv_per_stage", 2), n, 2)
            prev = in_channels
            for s in range(n):
                kv = _vol(kernels[s], ndim)
                for c in range(convs[s]):
                    total += conv(prev if c == 0 else f[s], f[s], kv)
                    prev = f[s]
        decoder = _per_stage(arch_kwargs.get("n_conv_per_stage_decoder", 2), n - 1, 2)
        for j in range(n - 1, 0, -1):  # from the bottom up: transposed conv, convs over the concatenation, seg layer
            below, skip = f[j], f[j - 1]
            total += _vol(strides[j], ndim) * below * skip + (skip if bias else 0)
            kv = _vol(kernels[j - 1], ndim)
            for c in range(decoder[n - 1 - j]):
                total += conv(2 * skip if c == 0 else skip, skip, kv)
            total += skip * heads + heads
        return total
    except (TypeError, ValueError):
        return None


def checkpoint_bytes_from_plans(params: int, plans_bytes: int = 0) -> int:
    """One checkpoint of a network of `params` parameters: float32 weights and SGD's momentum buffer (nnU-Net's
    optimizer), the plans pickled in its init_args, and its logging and zip overhead."""
    return 8 * params + plans_bytes + OVERHEAD_BYTES


@dataclass(frozen=True)
class DatasetFacts:
    """What the estimate reads of one preprocessed dataset and plans, once."""

    plans: Mapping[str, Any] | None
    plans_bytes: int
    channels: int
    heads: int
    case_voxels: tuple[int, ...]  # each training case's voxels before cropping (dataset_fingerprint.json)
    voxels_how: str
    splits: list[Any] | None
    file_ending: str | None
    problems: tuple[str, ...] = ()

    @classmethod
    def read(cls, dataset_dir: Path, plans_name: str) -> DatasetFacts:
        problems = []
        plans, why = load_json(dataset_dir / f"{plans_name}.json")
        if why or not isinstance(plans, dict):
            problems.append(why or f"{plans_name}.json not found in {dataset_dir}")
            plans = None
        try:
            plans_bytes = (dataset_dir / f"{plans_name}.json").stat().st_size
        except OSError:
            plans_bytes = 0
        ds, _ = load_json(dataset_dir / "dataset.json")
        ds = ds if isinstance(ds, dict) else {}
        channels = len(ds.get("channel_names") or ds.get("modality") or {0: 0})
        heads = segmentation_heads(ds.get("labels"))
        fingerprint, _ = load_json(dataset_dir / "dataset_fingerprint.json")
        voxels: tuple[int, ...] = ()
        how = ""
        if isinstance(fingerprint, dict) and isinstance(fingerprint.get("shapes_after_crop"), list):
            shapes = [s for s in fingerprint["shapes_after_crop"] if isinstance(s, list)]
            rel = fingerprint.get("median_relative_size_after_cropping")
            scale = 1 / rel if isinstance(rel, (int, float)) and 0 < rel < 1 else 1.0
            voxels = tuple(int(math.prod(int(x) for x in s) * scale) for s in shapes)
            how = "dataset_fingerprint.json's shapes after cropping" + (
                f", / {rel:.2f} (its median relative size after cropping) for the shape before" if scale != 1 else "")
        splits, _ = load_json(dataset_dir / "splits_final.json")
        ending = ds.get("file_ending")
        return cls(plans, plans_bytes, channels, heads, voxels, how, splits if isinstance(splits, list) else None,
                   ending if isinstance(ending, str) else None, tuple(problems))

    def mean_voxels(self) -> int:
        return sum(self.case_voxels) // len(self.case_voxels) if self.case_voxels else 0

    def validation_cases(self, fold: Union[int, str]) -> tuple[int, str]:
        """How many cases a fold's final validation predicts, and from what."""
        n = len(self.case_voxels)
        if fold == "all":
            return n, "fold all validates on every training case"
        if self.splits is not None and isinstance(fold, int) and fold < len(self.splits) \
                and isinstance(self.splits[fold], dict) and isinstance(self.splits[fold].get("val"), list):
            return len(self.splits[fold]["val"]), "splits_final.json"
        return math.ceil(n / 5), "a fifth of the cases: splits_final.json is not written yet"


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


def one_checkpoint(model_dir: Path, configuration: str, facts: DatasetFacts) -> tuple[int, str, str] | None:
    """(bytes, how, kind) of one checkpoint of the trainer/plans/configuration folder model_dir: the largest that
    exists there (any fold), else counted from the plans' network; None when neither can be had."""
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
    if facts.plans is None:
        return None
    arch = config_value(facts.plans, configuration, "architecture")
    kwargs = arch.get("arch_kwargs") if isinstance(arch, dict) else None
    params = count_parameters(kwargs, facts.channels, facts.heads) if isinstance(kwargs, dict) else None
    if params is None:
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


def fold_need(ctx: RunContext, facts: DatasetFacts, group: str | None = None) -> tuple[Need, list[str]]:
    """What one fold will still write (nothing once finished), and what could not be estimated."""
    layout = ctx.layout
    nn = ctx.config.nnunet
    name = f"{nn.configuration}/fold_{nn.fold}"
    group = group or nn.configuration
    if layout.is_finished():
        return Need(name, group, layout.fold_dir, done="finished"), []
    notes: list[str] = []
    parts = []
    one = one_checkpoint(layout.fold_dir.parent, nn.configuration, facts)
    if one is None:
        notes.append(f"{name}: checkpoints not estimated (no checkpoint of {nn.configuration} yet, and the plans' "
                     "network is not one this estimate can count)")
    else:
        size, how, _ = one
        snaps = ctx.config.checkpoint.snapshots
        count = 3 + snaps + 1
        present = sum(regular_size(layout.checkpoint(n)) for n in ("checkpoint_final.pth", "checkpoint_latest.pth",
                                                                   "checkpoint_best.pth"))
        present += tree_size(layout.supervisor_dir / "snapshots")
        parts.append(Part("checkpoints", count * size,
                          f"{count} x {human(size)}: latest, best and final, {snaps} snapshot(s) "
                          f"(checkpoint.snapshots) and a temporary copy while one is written atomically; one is {how}",
                          ESTIMATE, present))
    if facts.case_voxels:
        cases, whence = facts.validation_cases(nn.fold)
        voxels = facts.mean_voxels()
        npz = "--npz" in nn.extra_args
        per_case = voxels + (2 * facts.heads * voxels if npz else 0)
        softmax = f" and, with --npz, a float16 softmax of {facts.heads} channel(s)" if npz else ""
        what = (f"{cases} case(s) ({whence}) of ~{_voxels(voxels)} voxels (the mean of {facts.voxels_how}): a uint8 "
                f"segmentation each{softmax}, uncompressed (nnU-Net compresses them)")
        parts.append(Part("validation", cases * per_case, what, UPPER, tree_size(layout.fold_dir / "validation")))
    else:
        notes.append(f"{name}: validation outputs not estimated (no readable dataset_fingerprint.json)")
    cap = ctx.config.process.attempt_log_max_bytes
    parts.append(Part("logs", LOG_BYTES, f"nnU-Net's log and progress.png, our events and attempt logs (each attempt "
                                         f"log is cut at {human(3 * cap // 2) if cap else 'no cap'})", ESTIMATE))
    return Need(name, group, layout.fold_dir, tuple(parts)), notes


# ---- predictions ----


def prediction_need(name: str, input_dir: Path, output: Path, facts: DatasetFacts, probabilities: bool,
                    models: int = 1, combined: int = 0,
                    present_in: Sequence[Path] = ()) -> tuple[Need | None, list[str]]:
    """What a prediction of input_dir writes: `models` models' segmentations (with their softmax when
    `probabilities`), and `combined` more sets of segmentations (the ensemble, the postprocessed result)."""
    if facts.file_ending is None:
        return None, [f"{name}: not estimated (dataset.json names no file_ending)"]
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
    needs = [need]
    p = ctx.config.predict
    if p.input is not None and p.output is not None:
        out = (ctx.config_path.parent / p.output).resolve()
        pred, more = prediction_need("prediction", (ctx.config_path.parent / p.input).resolve(), out, facts,
                                     p.save_probabilities, present_in=[out])
        notes += more
        needs += [pred] if pred else []
    return DiskEstimate(tuple(needs), spaces(needs), tuple([*notes, *facts.problems]))


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
            notes.append(f"{cell.name}: not estimated ({exc})")
            continue
        group = cell.configuration if cell.study is None else f"{cell.study}/{cell.configuration}"
        need, more = fold_need(ctx, facts_of[plans], group)
        needs.append(replace(need, name=cell.name))
        notes += more
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
    return DiskEstimate(tuple(needs), spaces(needs), tuple(notes))


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


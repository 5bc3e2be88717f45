"""`export EXPERIMENT -o model.zip`: what find_best chose, packed by nnU-Net's own `nnUNetv2_export_model_to_zip`
(installable elsewhere with `nnUNetv2_install_pretrained_model_from_zip`).

nnU-Net's exporter takes one trainer (-tr) and one plans (-p) but several configurations (-c), and packs an
ensemble's folder (its postprocessing) only when every model of it is in the zip. So:

- one model, or an ensemble of one trainer and plans (the usual 2d + 3d_fullres): **one zip**, `-c` every chosen
  configuration (a chosen 3d_cascade_fullres brings its 3d_lowres, which predicts first);
- an ensemble across trainers or plans: **one zip per trainer x plans**, `model.zip` becoming
  `model.<trainer>__<plans>.zip`, and the ensemble's own files (summary.json, postprocessing.pkl/.json, which nnU-Net
  would leave out of both) added to each.

Before it runs it refuses (exit 1, saying why): no find_best choice, or one older than a fold / made over other
models; a chosen fold without a structurally sound checkpoint_final.pth (the zip check of supervisor.checkpoints,
no torch) or without a file nnU-Net's exporter reads; an output that exists (unless `force`). The exporter writes a
partial file beside the output; it becomes the output only once the zip tests whole (every member's CRC) and holds
each fold's checkpoint_final.pth (of the source's size), dataset.json and plans.json.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from supervisor.checkpoints.verify import structure_verdict
from supervisor.command import helper_env, nnunet_tool
from supervisor.errors import ConfigError, ExitCode, LaunchError
from supervisor.experiment.context import ExperimentContext
from supervisor.experiment.findbest import INFORMATION, find_best_done
from supervisor.stages.prediction.chosen import Chosen, Model, read_chosen

CHECKPOINT = "checkpoint_final.pth"
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")  # the exporter copies each, or fails
FOLD_FILES = (CHECKPOINT, "progress.png", "validation/summary.json")
ENSEMBLE_FILES = ("summary.json", "postprocessing.pkl", "postprocessing.json")


@dataclass(frozen=True)
class Export:
    """One zip: one trainer x plans, its configurations (in the experiment's order), the folds, where it goes."""

    trainer: str
    plans: str
    configurations: tuple[str, ...]
    folds: tuple[str, ...]
    output: Path
    extra_ensemble: str | None = None  # an ensemble across zips: its folder name under ensembles/, added to each

    @property
    def models(self) -> list[Model]:
        return [Model(self.trainer, self.plans, c) for c in self.configurations]

    @property
    def partial(self) -> Path:
        return self.output.with_name(f".{self.output.name}.partial-{os.getpid()}")


def plan(exp: ExperimentContext, chosen: Chosen, output: Path) -> list[Export]:
    """The zips for find_best's choice: one per trainer x plans (see the module's docstring)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for m in chosen.models:
        confs = groups.setdefault((m.trainer, m.plans), [])
        prev = exp.previous_stage(m.configuration)
        for c in ([prev] if prev else []) + [m.configuration]:  # the cascade's low-resolution stage first
            if c not in confs:
                confs.append(c)
    folds = tuple(str(f) for f in chosen.folds)
    ensemble = (f"ensemble___{'___'.join(m.name for m in chosen.models)}___{'_'.join(folds)}"
                if chosen.ensemble and len(groups) > 1 else None)
    out = []
    for (trainer, plans), confs in groups.items():
        target = output if len(groups) == 1 else output.with_name(f"{output.stem}.{trainer}__{plans}{output.suffix}")
        out.append(Export(trainer, plans, tuple(confs), folds, target, ensemble))
    return out


def argv(exp: ExperimentContext, e: Export, output: Path | None = None) -> list[str]:
    """nnUNetv2_export_model_to_zip for one zip (into `output`, by default its partial file). Not --not_strict:
    nnU-Net 2.8 declares it store_false with default False, so it never turns strictness off."""
    return [nnunet_tool("nnUNetv2_export_model_to_zip"), "-d", exp.dataset_name, "-o", str(output or e.partial),
            "-c", *e.configurations, "-tr", e.trainer, "-p", e.plans, "-f", *e.folds, "-chk", CHECKPOINT]


def problems(exp: ExperimentContext, exports: list[Export], force: bool) -> list[str]:
    """Why the zips cannot be made now (nothing: go)."""
    found = []
    base = exp.paths.results / exp.dataset_name
    for e in exports:
        if e.output.exists() and not force:
            found.append(f"{e.output} exists; give --force to replace it")
        for m in e.models:
            model_dir = base / m.name
            found += [f"{model_dir / n} is missing (nnU-Net's exporter packs it)" for n in MODEL_FILES
                      if not (model_dir / n).is_file()]
            for f in e.folds:
                fold_dir = model_dir / f"fold_{f}"
                ckpt = fold_dir / CHECKPOINT
                if not ckpt.is_file():
                    found.append(f"{ckpt} is missing: fold {f} of {m.name} has not finished training")
                    continue
                verdict = structure_verdict(ckpt)
                if not verdict.structure_ok:
                    found.append(f"{ckpt} is not usable: {verdict.reason()}")
                found += [f"{fold_dir / n} is missing (nnU-Net's exporter packs it)" for n in FOLD_FILES[1:]
                          if not (fold_dir / n).is_file()]
        if e.extra_ensemble and not (base / "ensembles" / e.extra_ensemble).is_dir():
            found.append(f"{base / 'ensembles' / e.extra_ensemble} is missing (find_best's ensemble folder)")
    return found


def verify_zip(exp: ExperimentContext, e: Export, path: Path) -> tuple[list[str], list[str]]:
    """(problems, what it holds in words) of a written zip."""
    base = exp.paths.results / exp.dataset_name
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                return [f"{path}: member {bad} is damaged (CRC)"], []
            sizes = {i.filename: i.file_size for i in zf.infolist()}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return [f"{path} is not a readable zip: {exc}"], []
    found, held = [], []
    for m in e.models:
        prefix = f"{exp.dataset_name}/{m.name}"
        found += [f"{path} lacks {prefix}/{n}" for n in ("dataset.json", "plans.json") if f"{prefix}/{n}" not in sizes]
        for f in e.folds:
            member = f"{prefix}/fold_{f}/{CHECKPOINT}"
            want = (base / m.name / f"fold_{f}" / CHECKPOINT).stat().st_size
            if member not in sizes:
                found.append(f"{path} lacks {member}")
            elif sizes[member] != want:
                found.append(f"{path}: {member} holds {sizes[member]} bytes, the fold's file {want}")
        cv = f"{prefix}/crossval_results_folds_{'_'.join(e.folds)}/postprocessing.pkl"
        held.append(f"{m.name}: folds {', '.join(e.folds)} ({CHECKPOINT}), plans.json, dataset.json"
                    + (", cross-validation summary and postprocessing" if cv in sizes else ""))
    ensembles = sorted({n.split("/")[2] for n in sizes if n.startswith(f"{exp.dataset_name}/ensembles/")
                        and n.count("/") >= 3})
    held += [f"ensembles/{n}: postprocessing" for n in ensembles]
    if f"{exp.dataset_name}/{INFORMATION}" in sizes:
        held.append(f"{INFORMATION} (find_best's choice)")
    held.append(f"{len(sizes)} files, {_size(sum(sizes.values()))} uncompressed")
    return found, held


def _add_ensemble(exp: ExperimentContext, e: Export) -> None:
    """An ensemble across zips: its files, which nnU-Net's exporter leaves out of each, added as it names them."""
    if e.extra_ensemble is None:
        return
    folder = exp.paths.results / exp.dataset_name / "ensembles" / e.extra_ensemble
    with zipfile.ZipFile(e.partial, "a", zipfile.ZIP_DEFLATED) as zf:
        for name in ENSEMBLE_FILES:
            if (folder / name).is_file():
                zf.write(folder / name, f"{exp.dataset_name}/ensembles/{e.extra_ensemble}/{name}")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def export_command(config: Path, output: Path, say: Callable[[str], None] = print, force: bool = False) -> int:
    """`nnunet-supervise export EXPERIMENT -o model.zip [--force]`: 0 written and verified; 1 nothing to export, a
    refusal or the exporter failed (each line says why); 2 a bad experiment file."""
    try:
        exp = ExperimentContext.load(config)
    except ConfigError as exc:
        say(f"nnunet-supervise: invalid config {exc.source}:")
        for p in exc.problems:
            say(f"  - {p}")
        return int(ExitCode.USAGE)
    where = exp.layout.root / INFORMATION
    try:
        chosen = read_chosen(where)
    except ConfigError as exc:
        say("nnunet-supervise: nothing to export: " + "; ".join(exc.problems))
        return 1
    if not find_best_done(exp):
        say(f"nnunet-supervise: {where} is older than a fold's validation or was made over other models than this "
            "experiment's: run `nnunet-supervise find-best` (or the experiment) again first")
        return 1
    foreign = [m.name for m in chosen.models if (m.trainer, m.plans) not in exp.spec.studies]
    if foreign:
        say(f"nnunet-supervise: {INFORMATION} chose {', '.join(foreign)}, not of this experiment")
        return 1
    output = output.resolve()
    exports = plan(exp, chosen, output)
    found = problems(exp, exports, force)
    if found:
        say("nnunet-supervise: cannot export find_best's choice:")
        for p in found:
            say(f"  - {p}")
        return 1
    try:
        env = helper_env(exp.run(exp.cells[0]))  # nnU-Net's folders, as the experiment's folds have them
        commands = [(e, argv(exp, e)) for e in exports]  # LaunchError before anything is written
    except LaunchError as exc:
        say(f"nnunet-supervise: {exc}")
        return 1
    what = ("ensemble of " + " + ".join(m.name for m in chosen.models)) if chosen.ensemble else chosen.models[0].name
    written: list[tuple[Export, list[str]]] = []
    for e, command in commands:
        try:
            e.output.parent.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                say(f"nnunet-supervise: nnUNetv2_export_model_to_zip failed (exit {done.returncode}) for "
                    f"{e.trainer}__{e.plans}:\n{_tail(done.stdout + done.stderr)}")
                return 1
            _add_ensemble(exp, e)
            bad, held = verify_zip(exp, e, e.partial)
            if bad:
                say("nnunet-supervise: the exported zip does not hold what it should:")
                for p in bad:
                    say(f"  - {p}")
                return 1
            os.replace(e.partial, e.output)
        except OSError as exc:
            say(f"nnunet-supervise: export into {e.output} failed: {exc}")
            return 1
        finally:
            e.partial.unlink(missing_ok=True)  # ours (this process's name): a failed export leaves no torn zip
        written.append((e, held))
    say(f"exported find_best's choice ({what}) of {exp.dataset_name}"
        + (f" as {len(written)} zips (one per trainer x plans: nnU-Net's exporter takes one of each)"
           if len(written) > 1 else "") + ":")
    for e, held in written:
        say(f"{e.output} ({_size(e.output.stat().st_size)}, verified):")
        for line in held:
            say(f"  {line}")
    say("install elsewhere with: nnUNetv2_install_pretrained_model_from_zip " + " ".join(str(e.output)
                                                                                     for e, _ in written[:1])
        + (" (and each of the others)" if len(written) > 1 else ""))
    for trainer, source in custom_trainers(exp, sorted({e.trainer for e, _ in written})).items():
        say(f"{trainer} is a custom trainer ({source}, from nnunet.trainer_paths): the zip does not hold its code; "
            "where the model is installed, nnUNetv2_predict needs it too (in a folder named by $nnUNet_extTrainer, "
            "or in nnunetv2/training/nnUNetTrainer/)")
    return 0


def custom_trainers(exp: ExperimentContext, trainers: list[str]) -> dict[str, Path]:
    """The file under nnunet.trainer_paths that defines each of trainers, where one does (nnU-Net finds a trainer
    by its class name in any module below those folders; a trainer of nnunetv2's own is found nowhere here)."""
    found: dict[str, Path] = {}
    for folder in exp.spec.nnunet.trainer_paths:
        root = (exp.config_path.parent / folder).resolve()
        for source in sorted(root.rglob("*.py")) if root.is_dir() else []:
            try:
                text = source.read_text(errors="replace")
            except OSError:
                continue
            for name in trainers:
                if name not in found and f"class {name}(" in text:
                    found[name] = source
    return found

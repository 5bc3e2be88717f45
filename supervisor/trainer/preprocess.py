"""`python -m supervisor.trainer.preprocess -d DATASET -c CONF [CONF ...] -np N`: a resumable plan_and_preprocess.

nnU-Net's DefaultPreprocessor.run deletes the configuration's folder first, so a killed preprocessing starts over.
This runs nnU-Net 2.8's own steps (extract_fingerprints, the planner found as plan_experiments finds it,
run_case_save with the arguments run passes, the gt copy of preprocess_dataset) and skips what is already there,
so what it writes is what nnU-Net writes. It deletes nothing: the arrays of a case killed before its .pkl are moved
to PARTIAL. Each step is announced on one stdout line starting with PREFIX (the supervisor parses them).
Runs in nnU-Net's environment; nnunetv2 is imported only where it is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

PREFIX = "nnunet-supervise preprocess: "
NP_ENV = "NNUNET_SUPERVISE_PREPROCESS_NP"  # the supervisor's out-of-memory remedy halves it
# arrays of unfinished cases, set aside: in the supervisor's run directory under the dataset folder (nnU-Net never
# reads there)
PARTIAL = "supervisor/partial"
# DefaultPreprocessor.run's very words: the supervisor classifies a dead worker by them
DEAD_WORKER = ("Some background worker is 6 feet under. Yuck. \n"
               "OK jokes aside.\n"
               "One of your background processes is missing. This could be because of an error (look for an error "
               "message) or because it was killed by your OS due to running out of RAM. If you don't see an error "
               "message, out of RAM is likely the problem. In that case reducing the number of workers might help")


def stop(code: int, message: str) -> NoReturn:
    """One line on stderr and this exit status (2: bad arguments), no traceback. Anything else, nnU-Net's errors
    above all, propagates: its traceback is what the supervisor's classifier reads."""
    print(f"{PREFIX}error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's usage block would make it more than one line
        stop(2, message)


def say(message: str) -> None:
    print(PREFIX + message, flush=True)


def load_json(path: str | Path) -> Any:
    with open(path) as f:  # batchgenerators' load_json
        return json.load(f)


def _json_object(path: Path, key: str | None = None) -> dict[str, Any] | None:
    """The JSON object in path (with a `key` object in it), or None: missing, cut or not what nnU-Net writes."""
    try:
        value = load_json(path)
    except (OSError, ValueError):
        return None
    ok = isinstance(value, dict) and (key is None or isinstance(value.get(key), dict))
    return value if ok else None


def _processes(given: int) -> int:
    value = os.environ.get(NP_ENV, "").strip()
    if value and not (value.isdigit() and int(value) > 0):
        stop(2, f"{NP_ENV}={value!r} is not a positive integer")
    if (n := int(value) if value else given) < 1:
        stop(2, f"-np {n}: must be at least 1")
    return n


def _dataset(arg: str, raw: Path) -> tuple[int, str]:
    """(id, DatasetXXX_Name) for -d, resolved as nnU-Net resolves it; its raw folder must exist."""
    if arg.isdigit():
        from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

        try:
            name = str(convert_id_to_dataset_name(int(arg)))
        except RuntimeError as exc:  # none or several folders of this id: nnU-Net's message, first line
            stop(2, f"-d {arg}: {str(exc).splitlines()[0]}")
    elif re.fullmatch(r"Dataset\d{3}_.+", arg):
        name = arg
    else:
        stop(2, f"-d {arg!r}: neither a dataset id nor a name like Dataset001_Name")
    if not (raw / name).is_dir():
        stop(2, f"-d {arg}: no folder {raw / name}")
    return int(name[7:10]), name


def _plan(dataset_id: int, planner: str) -> str:
    """Plan with the class nnU-Net's plan_experiments would find by this name; returns the plans name it wrote."""
    import nnunetv2
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                      current_module="nnunetv2.experiment_planning")
    if cls is None:  # plan_experiments would call None and fail with a TypeError
        stop(2, f"-pl {planner}: no such experiment planner in nnunetv2.experiment_planning")
    _, written = plan_experiment_dataset(dataset_id, cls)  # the entry point's defaults for the rest
    return str(written)


def _set_aside(out: Path, cases: list[str], partial: Path) -> None:
    """Move the arrays of cases without a .pkl out of the way: blosc2.asarray refuses to write over an existing
    .b2nd ("Error while creating the NDArray"), so run_case_save could not redo them. Moved, not deleted."""
    for case in cases:
        for path in (out / f"{case}.b2nd", out / f"{case}_seg.b2nd"):
            if path.exists():
                partial.mkdir(parents=True, exist_ok=True)
                os.replace(path, partial / path.name)  # over an older leftover of the same case, if any
                print(f"set aside the unfinished {path.name} in {partial}", flush=True)


class _Workers:
    """DefaultPreprocessor.run's spawn pool and dead-worker check, one pool for all configurations, started when a
    first case needs it: each worker spends seconds importing nnU-Net (torch), again for every pool."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool: Pool | None = None
        self.workers: list[Any] = []

    def run(self, fn: Any, jobs: dict[str, tuple[Any, ...]]) -> None:
        if not jobs:
            return
        if self.pool is None:
            import multiprocessing

            self.pool = multiprocessing.get_context("spawn").Pool(self.n)
            # a pool respawns killed workers that then do nothing: keep the originals, as nnU-Net does
            self.workers = list(self.pool._pool)  # type: ignore[attr-defined]
        pending = {k: self.pool.apply_async(fn, args) for k, args in jobs.items()}
        while pending:
            if not all(w.is_alive() for w in self.workers):
                raise RuntimeError(DEAD_WORKER)
            for k in [k for k, r in pending.items() if r.ready()]:
                pending.pop(k).get()  # a worker's exception is raised here
                say(f"preprocessed {k}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()  # what leaving `with Pool(...)` does


def _configuration(c: str, dataset_id: int, name: str, plans: str, raw: Path, pre: Path, workers: _Workers) -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    # what DefaultPreprocessor.run reads, read the same way for each configuration
    plans_manager = PlansManager(load_json(os.path.join(pre, name, plans + ".json")))
    if c not in plans_manager.available_configurations:
        say(f"configuration {c}: not in the plans, skipped")
        return
    configuration_manager = plans_manager.get_configuration(c)
    pp = configuration_manager.preprocessor_class(verbose=False)
    dataset_json = load_json(os.path.join(pre, name, "dataset.json"))
    dataset = get_filenames_of_train_images_and_targets(os.path.join(raw, name), dataset_json)
    if type(pp).run is not DefaultPreprocessor.run:  # its own run may write anything: run it whole, as nnU-Net does
        say(f"configuration {c}: {type(pp).__name__} has its own run(); preprocessing all {len(dataset)} cases")
        pp.run(dataset_id, c, plans, num_processes=workers.n)
        return
    out = pre / name / configuration_manager.data_identifier
    out.mkdir(parents=True, exist_ok=True)
    # nnU-Net 2.8's run_case_save -> nnUNetDatasetBlosc2.save_case writes CASE.b2nd, then CASE_seg.b2nd, then
    # CASE.pkl (write_pickle) last: a case with its .pkl has both arrays whole. (The pickle itself is written in
    # place, not atomically: a kill inside that write leaves a cut .pkl, which the supervisor's own check catches.)
    todo = [k for k in dataset if not (out / f"{k}.pkl").is_file()]
    say(f"configuration {c}: {len(dataset) - len(todo)} of {len(dataset)} cases already preprocessed, "
        f"{len(todo)} to go")
    _set_aside(out, todo, pre / name / PARTIAL / out.name)
    # the arguments DefaultPreprocessor.run passes
    workers.run(pp.run_case_save, {k: (os.path.join(out, k), dataset[k]["images"], dataset[k]["label"], plans_manager,
                                       configuration_manager, dataset_json) for k in todo})


def _copy_gt(name: str, raw: Path, pre: Path) -> None:
    """preprocess_dataset's copy: distutils' copy_file with update=True (only where the raw label is newer)."""
    from distutils.file_util import copy_file

    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    gt = pre / name / "gt_segmentations"
    gt.mkdir(parents=True, exist_ok=True)
    dataset_json = load_json(os.path.join(raw, name, "dataset.json"))
    dataset = get_filenames_of_train_images_and_targets(os.path.join(raw, name), dataset_json)
    for k in dataset:
        copy_file(dataset[k]["label"], os.path.join(gt, k + dataset_json["file_ending"]), update=True)


def main(argv: list[str]) -> None:
    parser = _Parser(prog="python -m supervisor.trainer.preprocess", description=__doc__)
    parser.add_argument("-d", required=True, help="dataset id or DatasetXXX_Name")
    parser.add_argument("-p", default="nnUNetPlans", help="plans name (default nnUNetPlans)")
    parser.add_argument("-pl", default="ExperimentPlanner", help="experiment planner class (default ExperimentPlanner)")
    parser.add_argument("-c", nargs="+", required=True, help="configurations, in this order")
    parser.add_argument("-np", type=int, required=True, help=f"processes (the environment's {NP_ENV} wins)")
    parser.add_argument("--verify_dataset_integrity", action="store_true")
    args = parser.parse_args(argv)
    roots = {v: os.environ.get(v, "") for v in ("nnUNet_raw", "nnUNet_preprocessed")}
    if missing := [v for v, path in roots.items() if not path]:
        stop(2, f"{' and '.join(missing)} not set in the environment")
    raw, pre = Path(roots["nnUNet_raw"]), Path(roots["nnUNet_preprocessed"])
    n = _processes(args.np)
    dataset_id, name = _dataset(args.d, raw)

    if _json_object(pre / name / "dataset_fingerprint.json") is not None:
        say("fingerprint kept")
    else:
        say("fingerprint")
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints

        # clean=True: we only get here when the file is missing or unreadable, and with clean=False nnU-Net would
        # load a cut one and fail every time. The fingerprint extractor writes no dataset.json; the planner does.
        extract_fingerprints([dataset_id], "DatasetFingerprintExtractor", n, args.verify_dataset_integrity, True,
                             False)

    plans_file = pre / name / f"{args.p}.json"
    if _json_object(plans_file, "configurations") is not None:
        say("plans kept")
    else:
        say("planning")
        written = _plan(dataset_id, args.pl)  # it also copies dataset.json into the preprocessed folder
        if _json_object(plans_file, "configurations") is None:
            stop(1, f"planner {args.pl} wrote {written}.json, not {plans_file.name}: pass -p {written}")

    workers = _Workers(n)
    try:
        for c in args.c:
            _configuration(c, dataset_id, name, args.p, raw, pre, workers)
    finally:
        workers.close()
    say("gt_segmentations")
    _copy_gt(name, raw, pre)
    say("done")


if __name__ == "__main__":
    main(sys.argv[1:])

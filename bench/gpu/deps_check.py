"""After scripts/gpu-check.sh installed the carried wheels (pip --no-deps --target SITE): is every requirement of
every carried distribution met by what this Python now sees (the carried ones and the machine's own), and do the
modules the check needs import?

    python bench/gpu/deps_check.py SITE

Prints one line per problem and a closing line; exit 0 when nothing but the expected gaps is missing. Expected gaps:
SimpleITK (bench/gpu/stub stands in; the check's dataset uses NibabelIO) and imagecodecs (nnU-Net 2.8 imports it
nowhere; tifffile treats it as optional).
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from pathlib import Path

EXPECTED_MISSING = {"simpleitk", "imagecodecs"}
STDLIB = {"argparse"}  # unittest2's requirement: the standard library's since Python 2.7
# a version outside the range is a note, not a problem: only these modules need it
SOFT = {"timm": "dynamic_network_architectures imports timm only in its Primus/EVA architectures"}
MODULES = ["supervisor.cli", "supervisor.trainer.launch", "nnunetv2.run.run_training",
           "nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnunetv2.imageio.reader_writer_registry",
           "nnunetv2.inference.export_prediction", "nnunetv2.evaluation.evaluate_predictions", "blosc2", "pydantic",
           "watchdog.observers", "isal.isal_zlib", "cc3d", "nibabel", "acvl_utils", "batchgeneratorsv2",
           "dynamic_network_architectures", "psutil", "pynvml", "yaml", "click", "rich", "prometheus_client"]


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main() -> int:
    from packaging.requirements import Requirement

    site = Path(sys.argv[1])
    problems: list[str] = []
    notes: list[str] = []
    carried = sorted(site.glob("*.dist-info"))
    for info in carried:
        dist = metadata.Distribution.at(info)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = norm(req.name)
            if name in STDLIB:
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                (notes if name in EXPECTED_MISSING else problems).append(
                    f"{dist.metadata['Name']} needs {req}: not installed"
                    + (" (expected: see bench/gpu/deps_check.py)" if name in EXPECTED_MISSING else ""))
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                line = f"{dist.metadata['Name']} needs {req}: {have} is installed"
                (notes.append(f"{line} ({SOFT[name]})") if name in SOFT else problems.append(line))
    for mod in MODULES:
        try:
            importlib.import_module(mod)
        except Exception as exc:
            problems.append(f"import {mod}: {type(exc).__name__}: {exc}")
    try:
        import SimpleITK
        notes.append(f"SimpleITK is {SimpleITK.__version__} from {Path(SimpleITK.__file__).parent}")
    except ImportError as exc:
        notes.append(f"SimpleITK: {exc}")
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"deps: {len(carried)} carried distribution(s), {len(MODULES)} module(s) imported, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

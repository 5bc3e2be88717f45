"""Make the preprocessed tiny dataset that scripts/gpu-check.sh carries to the GPU machine (run here, by
scripts/gpu-wheels.sh, with .venv's real nnU-Net):

    .venv/bin/python bench/gpu/make_dataset.py DEST     ->  DEST/nnUNet_preprocessed/Dataset901_Tiny (3d_fullres)

The demo's dataset (supervisor/demo/dataset.py: same cases, same id), but its dataset.json names NibabelIO as the
reader/writer (overwrite_image_reader_writer), so the plans say NibabelIO and training, the final validation's export
and its metrics never call SimpleITK, whose wheel does not fit what travels (bench/gpu/stub/SimpleITK stands in).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from supervisor.demo.dataset import DATASET_ID, DATASET_NAME, nnunet_env, write_raw_dataset


def main() -> int:
    dest = Path(sys.argv[1]).resolve()
    target = dest / "nnUNet_preprocessed" / DATASET_NAME
    with tempfile.TemporaryDirectory(prefix="gpu-check-data-") as tmp:
        root = Path(tmp)
        raw, pre, res = root / "raw", root / "pre", root / "res"
        for p in (raw, pre, res):
            p.mkdir()
        folder = write_raw_dataset(raw)
        doc = json.loads((folder / "dataset.json").read_text())
        doc["overwrite_image_reader_writer"] = "NibabelIO"
        (folder / "dataset.json").write_text(json.dumps(doc, indent=2))
        tool = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
        subprocess.run([str(tool), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1",
                        "--verify_dataset_integrity"], env=nnunet_env(raw, pre, res), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        plans = json.loads((pre / DATASET_NAME / "nnUNetPlans.json").read_text())
        if plans.get("image_reader_writer") != "NibabelIO":
            print(f"the plans name {plans.get('image_reader_writer')!r}, not NibabelIO", file=sys.stderr)
            return 1
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(pre / DATASET_NAME, target)
    print(f"preprocessed {DATASET_NAME} (3d_fullres, NibabelIO) in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m supervisor.trainer.splits PREPROCESSED_DATASET DATA_FOLDER`: nnU-Net's splits_final.json, written once,
atomically, before the folds of an experiment start together.

When the file is missing, every nnUNetv2_train writes it itself (`nnUNetTrainer.do_split`: an `isfile` check, then a
plain open-and-dump): trainers started together may each write it, and one may read another's half-written file
and crash (MIC-DKFZ/nnUNet#3064). This writes exactly what nnU-Net would (its own `generate_crossval_split`, seed
12345, five splits over the sorted case identifiers of the configuration's data, its own json layout), in one
atomic replace, so no trainer ever takes the write path. Runs in nnU-Net's environment (it imports nnunetv2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from supervisor.atomic import atomic_write_text


def write_splits(base: Path, data_folder: Path) -> str:
    target = base / "splits_final.json"
    if target.exists():
        return f"{target} exists: nnU-Net uses it as it is"
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    identifiers = infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder))
    splits = generate_crossval_split(list(np.sort(identifiers)), seed=12345, n_splits=5)
    atomic_write_text(target, json.dumps(splits, sort_keys=True, indent=4))  # batchgenerators' save_json layout
    return f"wrote {target} ({len(splits)} folds over {len(identifiers)} cases), as nnU-Net would"


if __name__ == "__main__":
    print(write_splits(Path(sys.argv[1]), Path(sys.argv[2])), flush=True)

"""A fingerprint of everything that decides the network a trainer builds, without importing torch or nnU-Net."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any


def network_fingerprint(net: dict[str, Any], ext_trainer: str) -> str:
    """A hash of what decides the network's state dict, cheap to compute (no torch): the request, the plans and
    dataset.json bytes, nnU-Net's and the architectures' versions, and every trainer source file nnU-Net may load
    (size + mtime for the installed package, content for the nnUNet_extTrainer folders given as `ext_trainer`).

    Torch-free: the daemon computes it to key its verdict cache, the probe to key its network-shape cache."""
    from importlib import metadata

    h = hashlib.sha256(json.dumps({k: net[k] for k in ("trainer", "configuration", "fold")}).encode())
    for name in ("plans_file", "dataset_json"):
        h.update(Path(net[name]).read_bytes())
    for dist in ("nnunetv2", "dynamic_network_architectures"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{dist}=={metadata.version(dist)}".encode())
    spec = importlib.util.find_spec("nnunetv2")
    if spec and spec.submodule_search_locations:
        for f in sorted(Path(next(iter(spec.submodule_search_locations)), "training").rglob("*.py")):
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    for folder in filter(None, ext_trainer.split(os.pathsep)):
        for f in sorted(Path(folder).rglob("*.py")):
            h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()

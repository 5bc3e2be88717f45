"""The training setup a resume must keep: what the checkpoints were trained with against what `--c` would train now.

nnU-Net's `--c` takes whatever the trainer says today: a `num_epochs` raised from 1000 to 1500 makes PolyLR jump
back up, another `initial_lr`, batch or patch size is another training, and a changed `splits_final.json` moves
validation cases into the training set, all without a word (#1848, #1745, #1099). So before every `--c`:

- *recorded*: what the last training start wrote (nnU-Net's own `debug.json` in the fold folder, rewritten at every
  training start: every trainer attribute as text) and the fold's split as this supervisor launched it
  (`supervisor/settings.json`);
- *current*: what the configured trainer sets once built (the checkpoint probe builds it for the compatibility
  check anyway and keeps these next to the network's shapes, under the same fingerprint) and `splits_final.json`.

Torch-free: the daemon reads text files only. `compare` is pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from supervisor.atomic import atomic_write_text
from supervisor.fileread import read_bytes

# The settings compared, in the order a person reads them.
NAMES = ("num_epochs", "initial_lr", "batch_size", "patch_size", "plans", "split")
ADVICE = ("to train longer or differently from this checkpoint, start a new training under a new trainer name with "
          "-pretrained_weights (nnU-Net keeps the old fold as it is); to go on under the new settings anyway, set "
          "checkpoint.on_changed_settings: continue")

_PATCH = re.compile(r"'patch_size': \[([^\]]*)\]")
_PLANS = re.compile(r"'plans_name': '([^']*)'")


def patch_text(values: object) -> str:
    """A patch size as one comparable word: 32x32x24."""
    items = values if isinstance(values, (list, tuple)) else []
    return "x".join(str(int(v)) for v in items)


def from_debug(path: Path) -> dict[str, str]:
    """The settings nnU-Net recorded at its last training start (debug.json: every value as str()); {} when
    unreadable (a run never started, or a foreign file)."""
    try:
        doc = json.loads(read_bytes(path, 32 << 20, "debug.json"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out = {k: doc[k] for k in ("num_epochs", "initial_lr", "batch_size") if isinstance(doc.get(k), str)}
    manager = doc.get("configuration_manager")
    m = _PATCH.search(manager) if isinstance(manager, str) else None
    if m:
        out["patch_size"] = "x".join(x.strip() for x in m.group(1).split(",") if x.strip())
    plans = doc.get("plans_manager")
    m = _PLANS.search(plans) if isinstance(plans, str) else None
    if m:
        out["plans"] = m.group(1)
    return out


def split_identity(splits_file: Path, fold: Union[int, str]) -> str | None:
    """The fold's split in one word (how many cases each side, a hash of both lists); None for fold "all" or
    without a readable splits_final.json (nnU-Net writes it at the first training start)."""
    if fold == "all":
        return None
    try:
        splits = json.loads(read_bytes(splits_file, 64 << 20, "splits_final.json"))
        entry = splits[int(fold)]
        train, val = sorted(map(str, entry["train"])), sorted(map(str, entry["val"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    digest = hashlib.sha256(json.dumps([train, val]).encode()).hexdigest()[:12]
    return f"{len(train)} train / {len(val)} val cases ({digest})"


def built_settings(cache: Path, fingerprint: str) -> dict[str, str]:
    """The current trainer's settings the probe kept beside the network's shapes, if they are for this
    fingerprint (the plans, dataset.json, trainer sources and nnU-Net install of now); else {}."""
    try:
        doc = json.loads(read_bytes(cache, 16 << 20, "network-shape cache"))
        if doc["fingerprint"] != fingerprint:
            return {}
        settings = doc["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: v for k, v in settings.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(settings, dict) else {}


def read_record(path: Path) -> dict[str, str]:
    """supervisor/settings.json: what this supervisor launched the training with last ({} when absent or damaged:
    then only what debug.json says is compared)."""
    try:
        doc = json.loads(read_bytes(path, 1 << 20, "settings record"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in doc.items() if k in NAMES and isinstance(v, str)} if isinstance(doc, dict) else {}


def write_record(path: Path, settings: Mapping[str, str]) -> None:
    atomic_write_text(path, json.dumps(dict(settings), indent=1, sort_keys=True) + "\n")


def compare(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[dict[str, Any]]:
    """The settings known on both sides that differ, as {name, from, to}. Numbers compare by value (debug.json's
    '0.01' is 1e-2)."""
    changes = []
    for name in NAMES:
        old, new = recorded.get(name), current.get(name)
        if old is None or new is None or _same(old, new):
            continue
        changes.append({"name": name, "from": old, "to": new})
    return changes


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def describe(changes: list[dict[str, Any]]) -> str:
    return "; ".join(f"{c['name']} {c['from']} -> {c['to']}" for c in changes)

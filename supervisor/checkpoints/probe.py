"""Content and compatibility checks of checkpoints, in a short-lived subprocess (it imports torch).

    python -m supervisor.checkpoints.probe REQUEST.json   ->  one line "NNUNET_SUPERVISE_RESULT {...}"

content: torch.load(weights_only=True) with the smallest allowlist nnU-Net checkpoints need, required keys,
finite tensors, a sane epoch, and trainer/configuration/fold of the run. compatibility: the network the
configured trainer builds (its own initialize(), on the meta device where possible) against the checkpoint's
network_weights, under nnU-Net's load_checkpoint rules. The network's shapes are cached (request "cache") under a
fingerprint of everything that decides them, so a relaunch skips the build unless plans, dataset.json, the trainer
code or the nnU-Net install changed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from supervisor.atomic import atomic_write_text
from supervisor.checkpoints.fingerprint import network_fingerprint
from supervisor.fileread import read_bytes
from supervisor.trainer.protocol import RESULT_PREFIX

REQUIRED_KEYS = ("network_weights", "optimizer_state", "current_epoch", "init_args", "trainer_name", "logging",
                 "_best_ema")
MAX_EPOCH = 1_000_000


def _allowlist() -> list[Any]:
    """Exactly the non-torch globals nnU-Net checkpoints carry: numpy scalars and dtypes (logging, _best_ema)."""
    import numpy as np

    allowed: list[Any] = [np.dtype]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 / numpy 1
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(__import__(module, fromlist=["scalar"]).scalar)
    # numpy >= 1.25 pickles dtypes through their classes (numpy.dtypes.Float64DType, ...)
    with contextlib.suppress(ImportError):
        import numpy.dtypes as npd

        allowed += [getattr(npd, n) for n in dir(npd) if n.endswith("DType")]
    return allowed


def _tensors(obj: Any, prefix: str) -> list[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in _tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [t for i, v in enumerate(obj) for t in _tensors(v, f"{prefix}[{i}]")]
    return []


def check_content(path: str, expect: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str], int | None]:
    """Load with weights_only=True and check what nnU-Net will rely on; returns (checkpoint, problems, epoch)."""
    import torch

    try:
        with torch.serialization.safe_globals(_allowlist()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        # torch words it "Unsupported global: GLOBAL x" or, for a module it blocks outright (os, subprocess),
        # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
        unsafe = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.I)
        if unsafe:
            return None, [f"refused by torch.load(weights_only=True): the pickle names {unsafe.group(1)}, which is "
                          "outside nnU-Net's allowlist and could run code; it was not loaded"], None
        return None, [f"torch.load failed: {type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"], None
    if not isinstance(ckpt, dict):
        return None, [f"top-level object is {type(ckpt).__name__}, not a dict"], None
    problems = []
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        problems.append(f"required key(s) missing: {', '.join(missing)}")
    epoch = ckpt.get("current_epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
        problems.append(f"current_epoch is {epoch!r}, not an integer from 0 to {MAX_EPOCH}")
        epoch = None
    if expect.get("trainer_name") and ckpt.get("trainer_name") != expect["trainer_name"]:
        problems.append(f"trainer_name is {ckpt.get('trainer_name')!r}, this run trains {expect['trainer_name']!r}")
    raw_args = ckpt.get("init_args")
    init_args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
    for key in ("configuration", "fold"):
        want = expect.get(key)
        if want is not None and key in init_args and str(init_args[key]) != str(want):
            problems.append(f"init_args.{key} is {init_args[key]!r}, this run is {key} {want!r}")
    bad = [name for name, t in _tensors({"network_weights": ckpt.get("network_weights"),
                                         "optimizer_state": ckpt.get("optimizer_state")}, "")
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        problems.append(f"{len(bad)} tensor(s) hold NaN or Inf, e.g. {', '.join(bad[:3])}")
    return ckpt, problems, epoch


def trainer_settings(trainer: Any) -> dict[str, str]:
    """What a resume must keep (checkpoints.settings): the built trainer's values, written as nnU-Net's debug.json
    writes them (str()), so the two compare."""
    from supervisor.checkpoints.settings import patch_text

    out: dict[str, str] = {}
    for name in ("num_epochs", "initial_lr", "batch_size"):
        if hasattr(trainer, name):
            out[name] = str(getattr(trainer, name))
    manager = getattr(trainer, "configuration_manager", None)
    if manager is not None and getattr(manager, "patch_size", None) is not None:
        out["patch_size"] = patch_text(manager.patch_size)
    plans = getattr(getattr(trainer, "plans_manager", None), "plans_name", None)
    if isinstance(plans, str):
        out["plans"] = plans
    return out


def build_network_state(net: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes of the state dict of the network the configured trainer builds (its own initialize()), and the
    trainer's resume-relevant settings."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    plans = json.loads(Path(net["plans_file"]).read_text())
    dataset_json = json.loads(Path(net["dataset_json"]).read_text())
    fold = net["fold"] if net["fold"] == "all" else int(net["fold"])
    with tempfile.TemporaryDirectory(prefix="nnunet-supervise-probe-") as scratch, \
            contextlib.redirect_stdout(io.StringIO()):
        # The trainer writes a training log and folders under nnUNet_results on construction: keep that away
        # from the real run.
        os.environ["nnUNet_results"] = scratch
        # torch.compile only wraps the network (we unwrap _orig_mod below); importing inductor costs seconds.
        os.environ["nnUNet_compile"] = "false"
        cls = recursive_find_trainer_class_by_name(net["trainer"])
        errors = []
        for device in ("meta", "cpu"):
            try:
                # nnU-Net pops "continue_training" off the plans it is given: a fresh copy per try. True as
                # nnUNetv2_train --c sets it (get_trainer_from_args).
                trainer = cls(plans={**plans, "continue_training": True}, configuration=net["configuration"], fold=fold,
                              dataset_json=dataset_json, device=torch.device(device))
                trainer.initialize()
                break
            except Exception as exc:
                errors.append(f"{device}: {type(exc).__name__}: {exc}")
        else:
            raise RuntimeError("could not build the trainer's network: " + "; ".join(errors))
        network = trainer.network
        network = getattr(network, "module", network)
        network = getattr(network, "_orig_mod", network)
        return {k: tuple(v.shape) for k, v in network.state_dict().items()}, trainer_settings(trainer)


def network_state(net: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], bool]:
    """The network's shapes, from the cache when its fingerprint still matches; returns (shapes, from_cache)."""
    cache = Path(net["cache"]) if net.get("cache") else None
    fingerprint = network_fingerprint(net, os.environ.get("nnUNet_extTrainer", "")) if cache else ""
    if cache is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            stored = json.loads(read_bytes(cache, 16 << 20, "network-shape cache"))
            # a cache from before settings were kept is rebuilt once (the settings guard needs them)
            if stored["fingerprint"] == fingerprint and isinstance(stored.get("settings"), dict):
                return {k: tuple(v) for k, v in stored["shapes"].items()}, True
    shapes, settings = build_network_state(net)
    if cache is not None:
        with contextlib.suppress(OSError):
            atomic_write_text(cache, json.dumps({"fingerprint": fingerprint, "trainer": net["trainer"],
                                                 "shapes": shapes, "settings": settings}))
    return shapes, False


def compare(weights: dict[str, Any], net_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """nnU-Net's load_checkpoint: strip 'module.' from keys the network lacks, then a strict load_state_dict."""
    renamed = {}
    for key, value in weights.items():
        if key not in net_shapes and key.startswith("module."):
            key = key[len("module."):]
        renamed[key] = tuple(value.shape)
    missing = sorted(k for k in net_shapes if k not in renamed)
    unexpected = sorted(k for k in renamed if k not in net_shapes)
    mismatches = sorted([k, list(renamed[k]), list(net_shapes[k])] for k in renamed
                        if k in net_shapes and renamed[k] != net_shapes[k])
    return {"missing_keys": missing, "unexpected_keys": unexpected, "shape_mismatches": mismatches,
            "hints": hints(list(weights), list(net_shapes), missing, unexpected, mismatches)}


def _stage_ids(keys: list[str], part: str) -> set[int]:
    out = set()
    for k in keys:
        bits = k.split(".")
        if part in bits:
            i = bits.index(part)
            if i + 1 < len(bits) and bits[i + 1].isdigit():
                out.add(int(bits[i + 1]))
    return out


def hints(ckpt_keys: list[str], net_keys: list[str], missing: list[str], unexpected: list[str],
          mismatches: list[Any]) -> list[str]:
    """Likely causes of a mismatch, in words."""
    out = []
    if any(k.startswith("_orig_mod.") or "._orig_mod." in k for k in ckpt_keys):
        out.append("checkpoint keys carry '_orig_mod.': they were saved from a torch.compile()d network without "
                   "unwrapping it (nnU-Net's own save_checkpoint unwraps); strip the prefix or save the _orig_mod")
        if not mismatches and {k.replace("_orig_mod.", "") for k in unexpected} == set(missing):
            return out  # the prefix explains every difference: nothing else changed
    if any(k.startswith("module.") for k in ckpt_keys) and not (missing or unexpected or mismatches):
        out.append("keys carry 'module.' (saved from DDP); nnU-Net strips it on load, so this is fine")
    elif any(k.startswith("module.module.") for k in ckpt_keys):
        out.append("keys carry 'module.' twice (DDP around DDP?); nnU-Net strips only one")
    # A whole stage present on one side only; a layer added inside an existing stage is an edit, not a stage count.
    lone_stages = _stage_ids(ckpt_keys, "stages") ^ _stage_ids(net_keys, "stages")
    if lone_stages:
        out.append(f"encoder/decoder stage(s) {sorted(lone_stages)} exist on one side only: the number of stages "
                   "(n_stages / features_per_stage in the plans) differs from the checkpoint's")
    if any("seg_layers" in k for k in missing + unexpected):
        out.append("segmentation heads (seg_layers) differ: deep supervision outputs or the number of stages/classes "
                   "changed (enable_deep_supervision, labels in dataset.json)")
    if mismatches:
        k, ck, net = mismatches[0]
        out.append(f"{len(mismatches)} tensor(s) changed shape (e.g. {k}: checkpoint {ck} vs network {net}): "
                   "channel counts differ, usually features_per_stage in the plans or the number of input "
                   "channels/classes")
    if (missing or unexpected) and not lone_stages:
        out.append("the trainer builds a different network than the one that wrote this checkpoint: was the "
                   "trainer class (build_network_architecture, added layers) edited since?")
    return out


def run(request: dict[str, Any]) -> dict[str, Any]:
    results = []
    net_shapes = None
    build_error = None
    cached = False
    t0 = time.monotonic()
    if request.get("network"):
        try:
            net_shapes, cached = network_state(request["network"])
        except Exception as exc:
            build_error = f"{type(exc).__name__}: {exc}"
    build_s = time.monotonic() - t0
    for path in request["candidates"]:
        t1 = time.monotonic()
        ckpt, problems, epoch = check_content(path, request.get("expect", {}))
        entry: dict[str, Any] = {"path": path, "epoch": epoch, "content_problems": problems,
                                 "missing_keys": [], "unexpected_keys": [], "shape_mismatches": [], "hints": [],
                                 "compatible": None}
        weights = ckpt.get("network_weights") if ckpt else None
        if net_shapes is not None and isinstance(weights, dict):
            entry.update(compare(weights, net_shapes))
            entry["compatible"] = not (entry["missing_keys"] or entry["unexpected_keys"] or entry["shape_mismatches"])
        entry["seconds"] = round(time.monotonic() - t1, 3)
        results.append(entry)
        del ckpt
    return {"results": results, "network_error": build_error, "network_build_s": round(build_s, 3),
            "network_cached": cached}


if __name__ == "__main__":
    req = json.loads(Path(sys.argv[1]).read_text())
    print(RESULT_PREFIX + json.dumps(run(req)), flush=True)

"""Find a trainer class by nnU-Net's own rules, in a throwaway subprocess (it imports torch).

Run as `python -m supervisor.trainer.lookup NAME` with nnUNet_extTrainer set; prints one result line.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor.trainer.protocol import RESULT_PREFIX


def _lookup(name: str) -> dict[str, Any]:
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):  # nnU-Net narrates its search on stdout
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            cls = recursive_find_trainer_class_by_name(name)
    except Exception as exc:
        return {"found": False, "error": f"{type(exc).__name__}: {exc}"}
    # nnU-Net drops external modules from sys.modules after loading, so inspect.getsourcefile cannot
    # find them; a method's code object still knows its file.
    codes = [getattr(v, "__code__", None) for v in vars(cls).values()]
    files = [c.co_filename for c in codes if c is not None]
    return {"found": True, "module": cls.__module__, "file": files[0] if files else None}


def find_trainer(name: str, env: Mapping[str, str], timeout_s: float = 300) -> dict[str, Any]:
    """Ask a subprocess with env to resolve the trainer; returns {found, module, file} or {found, error}."""
    try:
        out = subprocess.run([sys.executable, "-m", "supervisor.trainer.lookup", name], env=dict(env),
                             capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                             cwd=str(Path(__file__).resolve().parents[2]))  # where `supervisor` imports from
    except subprocess.TimeoutExpired:
        return {"found": False, "error": f"looking up the trainer took more than {timeout_s:g} s"}
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            return result
    return {"found": False, "error": (out.stderr.strip().splitlines() or ["no answer"])[-1]}


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(_lookup(sys.argv[1])), flush=True)

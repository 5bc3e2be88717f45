"""Verify checkpoints at three levels: structure (here, no torch), content and compatibility (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.checkpoint import verify_structure
from supervisor.ckpt_probe import RESULT_PREFIX
from supervisor.context import RunContext
from supervisor.errors import SupervisorError


class ProbeError(SupervisorError):
    """The verification subprocess itself failed: says nothing about the checkpoints."""


@dataclass
class Verdict:
    """Everything known about one checkpoint file."""

    path: str
    epoch: int | None = None
    structure_ok: bool = False
    content_ok: bool | None = None  # None: not checked
    compatible: bool | None = None  # None: not checked (no network to compare with)
    problems: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    shape_mismatches: list[list[Any]] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Unusable for any run (broken zip, unloadable, NaN, wrong trainer/fold): belongs in quarantine."""
        return not self.structure_ok or self.content_ok is False

    @property
    def ok(self) -> bool:
        return not self.damaged and self.compatible is not False

    def reason(self) -> str:
        return "; ".join(self.problems) or "ok"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def expectations(ctx: RunContext) -> dict[str, Any]:
    nn = ctx.config.nnunet
    return {"trainer_name": nn.trainer, "configuration": nn.configuration, "fold": nn.fold}


def network_request(ctx: RunContext, cache: Path | None = None) -> dict[str, Any]:
    """What the probe needs to build the configured trainer's network; cache: where to keep its shapes."""
    nn = ctx.config.nnunet
    base = ctx.paths.preprocessed / ctx.dataset_name
    return {"trainer": nn.trainer, "plans_file": str(base / f"{nn.plans}.json"),
            "dataset_json": str(base / "dataset.json"), "configuration": nn.configuration, "fold": nn.fold,
            "cache": str(cache) if cache else None}


def probe(candidates: list[str], expect: Mapping[str, Any], network: Mapping[str, Any] | None,
          env: Mapping[str, str], timeout_s: float = 600) -> dict[str, Any]:
    """Run supervisor.ckpt_probe in a subprocess and return its parsed answer."""
    request = {"candidates": candidates, "expect": dict(expect), "network": dict(network) if network else None}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="nnunet-supervise-probe-") as f:
        json.dump(request, f)
        f.flush()
        try:
            out = subprocess.run([sys.executable, "-m", "supervisor.ckpt_probe", f.name], env=dict(env),
                                 capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ProbeError(f"checkpoint verification took more than {timeout_s:g} s") from None
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            answer: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            return answer
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    raise ProbeError(f"checkpoint verification subprocess failed (exit {out.returncode}): {tail}")


def structure_verdict(path: Path) -> Verdict:
    """The first level alone (no torch): what the daemon can say by itself."""
    s = verify_structure(path)
    return Verdict(str(path), epoch=s.epoch, structure_ok=s.ok, problems=list(s.problems))


def verify_all(paths: list[Path], expect: Mapping[str, Any], network: Mapping[str, Any] | None,
               env: Mapping[str, str]) -> tuple[list[Verdict], str | None]:
    """Verdicts in the order given, plus a network-build error if the compatibility check could not run."""
    verdicts = [structure_verdict(p) for p in paths]
    sound = [v for v in verdicts if v.structure_ok]
    if not sound:
        return verdicts, None
    answer = probe([v.path for v in sound], expect, network, env)
    for v, r in zip(sound, answer["results"], strict=True):
        v.content_ok = not r["content_problems"]
        v.problems += r["content_problems"]
        v.epoch = r["epoch"]  # None where torch could not load it or the epoch is not a sane integer
        v.compatible = r["compatible"]
        v.missing_keys, v.unexpected_keys = r["missing_keys"], r["unexpected_keys"]
        v.shape_mismatches, v.hints = r["shape_mismatches"], r["hints"]
        if v.compatible is False:
            v.problems.append(f"does not fit the network {network and network.get('trainer')} builds: "
                              f"{len(v.missing_keys)} missing, {len(v.unexpected_keys)} unexpected key(s), "
                              f"{len(v.shape_mismatches)} shape mismatch(es)")
    return verdicts, answer.get("network_error")

"""What verification found out about one checkpoint file (pure data, shared by verify, plan and the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


def describe(v: Verdict, ok: bool) -> str:
    """`verify` for a person: each level, the problems, the keys, the hints."""
    lines = [f"{v.path}: {'usable' if ok else 'NOT usable'} (epoch {v.epoch})"]
    for name, passed in (("structure", v.structure_ok), ("content", v.content_ok), ("compatibility", v.compatible)):
        lines.append(f"  {name:<14}{'-' if passed is None else 'ok' if passed else 'FAILED'}")
    lines += [f"  problem: {p}" for p in v.problems]
    for title, items in (("missing key", v.missing_keys), ("unexpected key", v.unexpected_keys)):
        lines += [f"  {title}: {k}" for k in items]
    lines += [f"  shape mismatch: {key}: checkpoint {ck}, network {net}" for key, ck, net in v.shape_mismatches]
    lines += [f"  hint: {h}" for h in v.hints]
    return "\n".join(lines)

"""A prediction cut into parts: part K of N predicts every N-th input case from the K-th (counted from 0, in the
order of the case ids, as nnU-Net's own -part_id/-num_parts cut them), with a supervised predictor and a run
directory (lock, state, events, quarantine) of its own, so that N GPUs (or SLURM array tasks, or a Kubernetes Indexed
Job's pods) predict one test set at once. The cut depends on the input alone, never on what is done: a part
restarted, on any node, predicts the same cases.

The parts are checked complete together by the prediction without a part (`predict CONFIG`): it verifies every
output, keeps what the parts set aside, and predicts whatever they left.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, Union

from supervisor.layout import part_dirs
from supervisor.rundir.lock import RunLock

T = TypeVar("T")
_PART_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Part:
    index: int  # from 0, as SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX count
    count: int

    @classmethod
    def parse(cls, text: str) -> Part:
        """`K/N` (K from 0 to N-1); ValueError says what is allowed."""
        m = _PART_RE.match(text)
        if m is None:
            raise ValueError(f"--part {text!r}: give K/N, part K (counted from 0) of N, e.g. 0/4")
        part = cls(int(m.group(1)), int(m.group(2)))
        if part.count < 1 or part.index >= part.count:
            raise ValueError(f"--part {text!r}: K/N needs N >= 1 and 0 <= K < N")
        return part

    @property
    def name(self) -> str:
        """Its run directory's name, beside the whole prediction's."""
        return f"part-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, cases: dict[str, T]) -> dict[str, T]:
        """This part's cases of the input (every count-th id, in sorted order, from the index-th)."""
        ids = sorted(cases)[self.index::self.count]
        return {c: cases[c] for c in ids}


def parts_wanted(parts: Union[int, Literal["auto"]], device: str, gpus: Union[Sequence[Union[int, str]], str],
                 slots: int) -> int:
    """How many parts a prediction is cut into: predict.parts, or (auto) one per GPU listed (one where the GPUs are
    found at run time and not known here), one per CPU slot on the CPU."""
    if parts != "auto":
        return int(parts)
    if device == "cuda":
        return len(gpus) if not isinstance(gpus, str) and gpus else 1
    return max(1, slots)


def live_parts(supervisor_dir: Path, part: Part | None, lock_name: str) -> list[str]:
    """Who else predicts these cases now: for the whole prediction, each part held by a live supervisor; for a
    part, the whole prediction when it is."""
    if part is not None:
        return ["the whole prediction"] if RunLock(supervisor_dir.parent / lock_name).is_held_elsewhere() else []
    return [f"part {d.name[5:].replace('-of-', '/')}" for d in part_dirs(supervisor_dir)
            if RunLock(d / lock_name).is_held_elsewhere()]

"""A poison case must not sink ten thousand: which input case makes a predictor fail, found by trying it alone.

nnUNetv2_predict works through its cases in order and, relaunched with --continue_prediction, starts again at the
first one without an output; a case that crashes it (a garbage file, an image its workers cannot read) stops every
attempt at the same place. Which case it is cannot be read off the log: its preprocessing runs in background workers
ahead of the case being predicted, so the crash may come while nnU-Net still says it is on the case before. So:
after `threshold` attempts in a row that wrote no output, the first case without one is predicted *alone*. If that
attempt fails too, the case is the culprit and is set aside (the rest go on without it); if it succeeds, it was
innocent and the next suspect is tried the same way when attempts stall again. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union


@dataclass(frozen=True)
class PoisonWatch:
    """What the last attempts showed."""

    without_output: int = 0  # attempts in a row that ended without writing any output
    isolated: Union[str, None] = None  # the case the attempt now running (or next) predicts alone


@dataclass(frozen=True)
class Verdict:
    watch: PoisonWatch
    set_aside: Union[str, None] = None  # a case proven to fail the predictor on its own
    note: str = ""  # what was concluded, in words ("" when nothing)


def after_attempt(w: PoisonWatch, wrote_output: bool, ok: bool, first_missing: Union[str, None],
                  threshold: int = 2) -> Verdict:
    """The next step after an attempt ended. wrote_output: it wrote at least one new verified output; ok: it ended
    as it should (exit 0); first_missing: the first case, in nnU-Net's order, still without an output."""
    if w.isolated is not None:
        case = w.isolated
        if wrote_output or ok:
            return Verdict(PoisonWatch(), note=f"case {case} predicted alone: it is not what fails the predictor")
        return Verdict(PoisonWatch(), set_aside=case,
                       note=f"case {case} failed the predictor on its own: set aside, the rest go on without it")
    if wrote_output or ok:
        return Verdict(PoisonWatch())
    w = replace(w, without_output=w.without_output + 1)
    if w.without_output >= threshold and first_missing is not None:
        return Verdict(PoisonWatch(isolated=first_missing),
                       note=f"{w.without_output} attempts in a row wrote no output: predicting {first_missing} (the "
                            "first case without one) alone, to find out whether it is what fails")
    return Verdict(w)

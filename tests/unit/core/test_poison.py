"""The poison rule: which case fails a predictor, found by trying it alone (core.poison)."""

from __future__ import annotations

from supervisor.core.poison import PoisonWatch, after_attempt


def test_one_failed_attempt_is_not_yet_a_suspect() -> None:
    v = after_attempt(PoisonWatch(), wrote_output=False, ok=False, first_missing="c3")
    assert v.watch == PoisonWatch(without_output=1) and v.set_aside is None and v.note == ""


def test_two_failed_attempts_in_a_row_try_the_first_missing_case_alone() -> None:
    v = after_attempt(PoisonWatch(without_output=1), wrote_output=False, ok=False, first_missing="c3")
    assert v.watch == PoisonWatch(isolated="c3") and v.set_aside is None and "predicting c3" in v.note


def test_the_case_alone_failing_again_is_set_aside_and_the_count_starts_over() -> None:
    v = after_attempt(PoisonWatch(isolated="c3"), wrote_output=False, ok=False, first_missing="c3")
    assert v.set_aside == "c3" and v.watch == PoisonWatch() and "set aside" in v.note


def test_the_case_alone_succeeding_is_innocent() -> None:
    v = after_attempt(PoisonWatch(isolated="c3"), wrote_output=True, ok=True, first_missing="c4")
    assert v.set_aside is None and v.watch == PoisonWatch() and "not what fails" in v.note


def test_an_attempt_that_wrote_an_output_resets_the_count() -> None:
    v = after_attempt(PoisonWatch(without_output=1), wrote_output=True, ok=False, first_missing="c5")
    assert v.watch == PoisonWatch() and v.set_aside is None


def test_nothing_left_to_suspect_keeps_counting() -> None:
    v = after_attempt(PoisonWatch(without_output=5), wrote_output=False, ok=False, first_missing=None)
    assert v.watch == PoisonWatch(without_output=6) and v.set_aside is None

"""The stall clock: allowances per phase, the learned timeout, its floor. Pure, fake time."""

from __future__ import annotations

from supervisor.core.stall import StallRules, StallWatch

AUTO = StallRules(startup_grace_s=100, stall_timeout_s=None, floor_s=10, auto_factor=3, validation_grace_s=500)


def test_startup_grace_then_the_auto_timeout_learned_from_epoch_times() -> None:
    w = StallWatch(AUTO, launched_at=0.0)
    assert w.stalled(99.0) is None
    assert "startup phase" in (w.stalled(100.0) or "")
    w.progress(50.0, "epoch 0 started", "training")
    assert w.timeout_s() == 100  # nothing learned yet: as patient as the start-up
    w.epoch_ended(80.0, 30.0, first_of_attempt=True)  # warm-up epoch, but the only measure so far
    w.epoch_ended(90.0, 8.0, first_of_attempt=False)
    assert w.epoch_times == [30.0, 8.0] and w.timeout_s() == 90.0  # 3 x the longest recent epoch
    w.epoch_times = [5.0, 6.0, 4.0]
    assert w.timeout_s() == 18.0
    assert w.stalled(107.9) is None
    message = w.stalled(108.0)
    assert message is not None and "no progress for 18 s in the training phase" in message
    assert "auto: 3 x the longest recent epoch" in message and "last sign of life: epoch end" in message


def test_auto_never_below_the_floor_and_an_explicit_timeout_wins() -> None:
    w = StallWatch(AUTO, 0.0, epoch_times=[1.0])
    w.progress(0.0, "epoch 3 started", "training")
    assert w.timeout_s() == 10  # 3 x 1 s is below the floor
    fixed = StallWatch(StallRules(startup_grace_s=100, stall_timeout_s=42.0), 0.0, epoch_times=[1.0])
    fixed.progress(0.0, "epoch 1 started", "training")
    assert fixed.timeout_s() == 42.0


def test_the_first_epoch_of_a_later_attempt_does_not_skew_the_learned_pace() -> None:
    w = StallWatch(AUTO, 0.0, epoch_times=[5.0, 5.0])
    w.epoch_ended(10.0, 60.0, first_of_attempt=True)  # compile + worker start-up
    assert w.epoch_times == [5.0, 5.0]


def test_validation_phase_gets_its_own_allowance() -> None:
    w = StallWatch(AUTO, 0.0, epoch_times=[5.0])
    w.progress(0.0, "training done, final validation", "validation")
    assert w.timeout_s() == 500
    assert w.stalled(499.0) is None and w.stalled(500.0) is not None


def test_the_validation_allowance_is_honoured_exactly_even_below_the_floor() -> None:
    rules = StallRules(startup_grace_s=900, floor_s=120, validation_grace_s=30)
    w = StallWatch(rules, 0.0, epoch_times=[200.0])  # auto training timeout: 400 s
    w.progress(10.0, "training done, final validation", "validation")
    assert w.timeout_s() == 30
    assert w.stalled(39.9) is None
    why = w.stalled(40.0)
    assert why is not None and "in the validation phase (allowed 30 s)" in why

"""The attempt watch over real files: epochs, checkpoints, validation output, lingering, NaN, heartbeats."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from supervisor.core.stall import StallRules
from supervisor.layout import RunLayout
from supervisor.stages.training.attempt import AttemptWatch
from supervisor.stages.training.traininglog import LogProgress

AUTO = StallRules(startup_grace_s=100, stall_timeout_s=None, floor_s=10, auto_factor=3, validation_grace_s=500)


def write_lines(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        for line in lines:
            f.write(f"2026-11-28 10:00:00.000000: {line} \n")


def watch_for(tmp_path: Path, rules: StallRules = AUTO, **kw: float) -> tuple[AttemptWatch, RunLayout]:
    layout = RunLayout(tmp_path / "res", "Dataset901_Tiny", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", "0")
    layout.supervisor_dir.mkdir(parents=True)
    (layout.fold_dir / "training_log_old.txt").write_text("2026: Epoch 0 \n")  # an earlier attempt's log
    args = {"linger_grace_s": 60.0, "nan_loss_epochs": 3, **kw}
    return AttemptWatch(layout, 1, set(layout.training_logs()), rules, 0.0, [], args["linger_grace_s"],
                        int(args["nan_loss_epochs"])), layout


def test_attempt_watch_sees_epochs_and_flags_a_stall_after_the_learned_timeout(tmp_path: Path) -> None:
    watch, layout = watch_for(tmp_path)
    log = layout.fold_dir / "training_log_2026_11_28_10_00_00.txt"
    write_lines(log, "Epoch 4", "train_loss -0.5", "val_loss -0.4", "Pseudo dice [np.float32(0.81)]",
                "Epoch time: 4.0 s", "Epoch 5")
    assert watch.poll(10.0) is None
    assert watch.stall.phase == "training" and watch.stall.epoch_times == [4.0]
    status = watch.status(10.0)
    assert status["train_loss"] == -0.5 and status["pseudo_dice"] == "[np.float32(0.81)]"
    assert status["stall_timeout_s"] == 12.0  # max(floor 10, 3 x 4 s)
    assert watch.poll(21.9) is None
    verdict = watch.poll(22.0)
    assert verdict is not None and verdict.kind == "stall"


def test_a_checkpoint_write_counts_as_progress(tmp_path: Path) -> None:
    watch, layout = watch_for(tmp_path)
    write_lines(layout.fold_dir / "training_log_new.txt", "Epoch 0", "Epoch time: 4.0 s")
    watch.poll(0.0)
    layout.checkpoint("checkpoint_latest.pth").write_bytes(b"x")
    assert watch.poll(11.0) is None
    assert watch.stall.last_what == "checkpoint written"
    assert watch.poll(22.9) is None and watch.poll(23.0) is not None


def test_validation_output_keeps_a_long_final_validation_alive(tmp_path: Path) -> None:
    watch, layout = watch_for(tmp_path)
    log = layout.fold_dir / "training_log_new.txt"
    write_lines(log, "Epoch 9", "Epoch time: 4.0 s", "Training done.")
    watch.poll(0.0)
    assert watch.stall.phase == "validation"
    (layout.fold_dir / "validation").mkdir()
    for i, now in enumerate((400.0, 800.0, 1200.0)):
        (layout.fold_dir / "validation" / f"case_{i}.nii.gz").write_bytes(b"x")
        assert watch.poll(now) is None
    assert watch.poll(1699.0) is None and watch.poll(1700.0) is not None


def test_finished_then_lingering(tmp_path: Path) -> None:
    watch, layout = watch_for(tmp_path, linger_grace_s=30.0)
    (layout.fold_dir / "validation").mkdir()
    (layout.fold_dir / "validation" / "summary.json").write_text("{}")
    layout.checkpoint("checkpoint_final.pth").write_bytes(b"x")
    assert watch.poll(5000.0) is None  # finished: silence is no stall
    verdict = watch.poll(5030.0)
    assert verdict is not None and verdict.kind == "lingering"


def test_nan_losses_in_a_row_are_divergence_but_an_interrupted_run_of_them_is_not(tmp_path: Path) -> None:
    watch, layout = watch_for(tmp_path)
    log = layout.fold_dir / "training_log_new.txt"
    write_lines(log, "Epoch 0", "train_loss nan", "Epoch 1", "train_loss nan", "Epoch 2", "train_loss -0.1",
                "Epoch 3", "train_loss nan", "Epoch 4", "train_loss np.float32(nan)")
    assert watch.poll(1.0) is None
    write_lines(log, "Epoch 5", "train_loss nan")
    verdict = watch.poll(2.0)
    assert verdict is not None and verdict.kind == "diverged" and "nan for 3 epochs" in verdict.message


def test_loss_lines_parse_like_nnunet_prints_them() -> None:
    p = LogProgress()
    for line in ["x: train_loss 0.3434 ", "x: val_loss np.float32(-0.2153) ", "x: Pseudo dice [np.float32(0.3192)] "]:
        p.feed_line(line)
    assert (p.train_loss, p.val_loss, p.pseudo_dice) == (0.3434, -0.2153, "[np.float32(0.3192)]")


def test_cooperative_heartbeats_are_progress_and_scale_the_timeout_once_an_epoch_ended(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "res", "Dataset901_Tiny", "nnUNetTrainer", "nnUNetPlans", "3d_fullres", "0")
    layout.supervisor_dir.mkdir(parents=True)
    beat = layout.heartbeat_file
    beat.write_text(json.dumps({"epoch": 0, "iteration": 9, "phase": "training", "max_gap_s": 1.0}))
    watch = AttemptWatch(layout, 1, set(), AUTO, 0.0, [20.0], 60.0, 3, heartbeat=beat)

    def pulse(epoch: int, iteration: int, gap: float) -> None:
        beat.write_text(json.dumps({"epoch": epoch, "iteration": iteration, "phase": "training", "max_gap_s": gap}))
        os.utime(beat, ns=(time.time_ns(), time.time_ns() + iteration))  # a new stamp even within a tick

    assert watch.poll(1.0) is None and watch.stall.last_what == "launch"  # the last attempt's beat is not news
    pulse(3, 1, 2.0)
    watch.poll(5.0)
    assert watch.stall.last_what == "heartbeat (epoch 3, iteration 1)" and watch.stall.last_progress == 5.0
    assert watch.stall.timeout_s() == 60.0  # no epoch end in this attempt yet: 3 x the 20 s epoch
    write_lines(layout.fold_dir / "training_log_new.txt", "Epoch 3", "Epoch time: 20.0 s", "Epoch 4")
    pulse(4, 2, 4.0)  # the gap now includes an epoch end with its saves
    watch.poll(30.0)
    assert watch.stall.beat_gap_s == 4.0 and watch.stall.timeout_s() == 12.0  # max(floor 10, 3 x 4 s)
    message = watch.stall.stalled(42.0)
    assert message is not None and "gap between heartbeats" in message


def test_in_validation_only_cases_and_exports_count_not_a_warning_printed_in_a_loop(tmp_path: Path) -> None:
    rules = StallRules(startup_grace_s=900, floor_s=120, validation_grace_s=30)
    watch, layout = watch_for(tmp_path, rules)
    log = layout.fold_dir / "training_log_new.txt"
    write_lines(log, "Epoch 9", "Epoch time: 4.0 s", "Training done.")
    assert watch.poll(0.0) is None and watch.stall.phase == "validation"
    write_lines(log, "predicting tiny_000")
    assert watch.poll(20.0) is None  # a case started: progress at 20 s
    attempt_log = layout.attempt_log(1)
    for now in (25.0, 30.0, 35.0, 40.0, 45.0):  # a deadlocked export pool, a warning printed every 5 s
        with attempt_log.open("a") as f:
            f.write("UserWarning: something repeats\n")
        assert watch.poll(now) is None
    alarm = watch.poll(50.0)
    assert alarm is not None and alarm.kind == "stall" and "allowed 30 s" in alarm.message


def test_exports_to_the_next_stage_count_as_validation_progress(tmp_path: Path) -> None:
    rules = StallRules(startup_grace_s=900, floor_s=120, validation_grace_s=30)
    watch, layout = watch_for(tmp_path, rules)
    write_lines(layout.fold_dir / "training_log_new.txt", "Epoch 9", "Epoch time: 4.0 s", "Training done.")
    watch.poll(0.0)
    stage = layout.fold_dir / "predicted_next_stage" / "3d_cascade_fullres"
    stage.mkdir(parents=True)
    for i, now in enumerate((25.0, 50.0, 75.0)):
        (stage / f"tiny_{i:03d}.npz").write_bytes(b"x")
        assert watch.poll(now) is None
    assert watch.poll(104.0) is None and watch.poll(105.0) is not None


def test_workers_stuck_on_a_full_dev_shm_are_a_hang_after_30_silent_seconds(tmp_path: Path) -> None:
    watch, layout = watch_for(tmp_path)
    layout.attempt_log(1).write_text(
        "Traceback (most recent call last):\n  File \"multiprocessing/queues.py\", line 244, in _feed\n"
        "RuntimeError: unable to allocate shared memory(shm) for file </torch_32231_4279090103_5635>: No space left "
        "on device (28)\n")
    assert watch.poll(29.0) is None  # within the start-up grace, and not yet 30 s of silence
    alarm = watch.poll(30.0)
    assert alarm is not None and alarm.kind == "shm_exhausted" and "/dev/shm" in alarm.message
    quiet, other = watch_for(tmp_path / "b")
    other.attempt_log(1).write_text("all fine\n")
    assert quiet.poll(30.0) is None  # silence alone is the start-up grace's business

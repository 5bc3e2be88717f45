"""Epoch progress from nnU-Net's training_log_*.txt, parsed incrementally as the trainer appends to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.stages.training.traininglog import LogFollower, LogProgress, read_progress, read_tail


def line(time: str, text: str) -> str:
    """One line as nnU-Net's print_to_log_file writes it: '<timestamp>: <text> \\n' (note the trailing space)."""
    return f"2026-11-28 {time}: {text} \n"


HEADER = (
    "\n#######################################################################\n"
    "Please cite the following paper when using nnU-Net:\n"
    "Isensee, F., Jaeger, P. F., Kohl, S. A., Petersen, J., & Maier-Hein, K. H. (2021). nnU-Net: a self-configuring "
    "method for deep learning-based biomedical image segmentation. Nature methods, 18(2), 203-211.\n"
    "#######################################################################\n"
    + line("04:22:44.101920", "Using splits from existing split file: /data/pre/Dataset901_Tiny/splits_final.json")
    + line("04:22:44.102311", "The split file contains 5 splits.")
    + line("04:22:44.102402", "Desired fold for training: 0")
)


def epoch(n: int, start: str, end: str, seconds: float) -> str:
    return (
        line(start, f"Epoch {n}")
        + line(start, "Current learning rate: 0.00982")
        + line(end, "train_loss -0.2152")
        + line(end, "val_loss -0.3018")
        + line(end, "Pseudo dice [np.float32(0.6121)]")
        + line(end, f"Epoch time: {seconds} s")
    )


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "training_log_2026_11_28_04_22_44.txt"


def test_missing_file_reports_nothing_yet(log: Path) -> None:
    follower = LogFollower(log)

    assert follower.poll() == LogProgress()
    append(log, HEADER + line("04:22:50.798051", "Epoch 0"))
    assert follower.poll().current_epoch == 0


def test_epoch_start_then_end_counts_one_completed_epoch(log: Path) -> None:
    follower = LogFollower(log)
    append(log, HEADER + line("04:22:50.798051", "Epoch 0"))

    progress = follower.poll()
    assert (progress.first_epoch, progress.current_epoch, progress.epochs_completed) == (0, 0, 0)

    append(log, line("04:22:55.4", "Epoch time: 4.59 s"))

    progress = follower.poll()
    assert (progress.current_epoch, progress.epochs_completed, progress.epoch_times) == (0, 1, [4.59])


def test_epoch_n_finished_means_n_plus_one_completed(log: Path) -> None:
    append(log, HEADER + epoch(0, "04:22:50.798051", "04:22:55.4", 4.59) + epoch(1, "04:22:55.5", "04:23:00.1", 4.6)
           + epoch(2, "04:23:00.2", "04:23:04.7", 4.5) + line("04:23:04.8", "Epoch 3"))

    progress = read_progress(log)

    assert progress.current_epoch == 3
    assert progress.epochs_completed == 3  # epoch 3 has started, not ended
    assert progress.epoch_times == [4.59, 4.6, 4.5]
    assert progress.first_epoch == 0


def test_partial_lines_count_only_once_completed(log: Path) -> None:
    follower = LogFollower(log)
    append(log, HEADER + line("04:22:50.798051", "Epoch 0"))
    follower.poll()

    append(log, "2026-11-28 04:22:55.4: Epoch ti")
    assert follower.poll().epochs_completed == 0
    append(log, "me: 4.5")
    assert follower.poll().epochs_completed == 0
    # "Epoch time: 4.5" without " s\n" would be wrong; the digits must not be taken before the line is whole
    append(log, "9 s ")
    assert follower.poll().epoch_times == []
    append(log, "\n")

    progress = follower.poll()
    assert progress.epochs_completed == 1
    assert progress.epoch_times == [4.59]


def test_partial_epoch_start_line_is_not_misread(log: Path) -> None:
    follower = LogFollower(log)
    append(log, HEADER + epoch(0, "04:22:50.798051", "04:22:55.4", 4.59) + "2026-11-28 04:22:55.5: Epoch 1")

    assert follower.poll().current_epoch == 0
    append(log, "2 \n")  # the line was "Epoch 12" all along, not "Epoch 1"

    assert follower.poll().current_epoch == 12


def test_line_split_inside_a_multibyte_character(log: Path) -> None:
    follower = LogFollower(log)
    data = (line("04:22:44.1", "Trainer für Pilze") + line("04:22:50.798051", "Epoch 0")).encode()
    cut = data.index("ü".encode()) + 1

    with log.open("ab") as f:
        f.write(data[:cut])
    follower.poll()
    with log.open("ab") as f:
        f.write(data[cut:])

    assert follower.poll().current_epoch == 0


def test_each_poll_reads_only_what_was_added(log: Path) -> None:
    follower = LogFollower(log)
    append(log, HEADER + epoch(0, "04:22:50.798051", "04:22:55.4", 4.59))
    follower.poll()
    follower.poll()  # nothing new: must not count epoch 0's time twice

    append(log, epoch(1, "04:22:55.5", "04:23:00.1", 4.6))

    assert follower.poll().epoch_times == [4.59, 4.6]


def test_resumed_log_starts_at_the_checkpoint_epoch(log: Path) -> None:
    append(log, HEADER + epoch(4, "05:10:01.2", "05:10:06.0", 4.8) + line("05:10:06.1", "Epoch 5"))

    progress = read_progress(log)

    assert progress.first_epoch == 4
    assert progress.current_epoch == 5
    assert progress.epochs_completed == 5


def test_epoch_time_before_any_epoch_start_does_not_count(log: Path) -> None:
    append(log, line("05:10:01.2", "Epoch time: 4.8 s"))

    progress = read_progress(log)

    assert progress.epochs_completed == 0
    assert progress.epoch_times == [4.8]


def test_training_done_and_validation_done(log: Path) -> None:
    follower = LogFollower(log)
    append(log, HEADER + epoch(0, "04:22:50.798051", "04:22:55.4", 4.59)
           + line("04:22:55.6", "Training done.")
           + line("04:22:55.7", "predicting case_001")
           + line("04:22:57.2", "predicting case_002"))

    progress = follower.poll()
    assert (progress.training_done, progress.validation_done) == (True, False)

    append(log, line("04:22:59.9", "Validation complete") + line("04:22:59.9", "Mean Validation Dice:  0.71"))

    progress = follower.poll()
    assert (progress.training_done, progress.validation_done) == (True, True)
    assert progress.epochs_completed == 1


def test_other_lines_mentioning_epochs_are_ignored(log: Path) -> None:
    append(log, line("04:22:44.1", "num_epochs: 1000")
           + line("04:22:44.2", "Epoch 3 is not a number line: Epoch x")
           + line("04:22:44.3", "Epoch time: fast s"))

    progress = read_progress(log)

    assert (progress.current_epoch, progress.epochs_completed, progress.epoch_times) == (None, 0, [])


def test_read_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_tail(tmp_path / "attempt-1.log") == ""


def test_read_tail_of_a_small_file_is_the_whole_file(log: Path) -> None:
    append(log, HEADER)
    assert read_tail(log) == HEADER


def test_read_tail_of_a_large_file_is_its_end(log: Path) -> None:
    body = "".join(epoch(n, "04:22:50.1", "04:22:55.4", 4.59) for n in range(2000))
    append(log, body + "Traceback (most recent call last):\nEOFError: Ran out of input\n")

    tail = read_tail(log, max_bytes=4096)

    assert len(tail.encode()) == 4096
    assert tail.endswith("EOFError: Ran out of input\n")
    assert log.read_text().endswith(tail)


def test_read_tail_default_limit_is_64_kib(log: Path) -> None:
    log.write_bytes(b"x" * (200 * 1024))
    assert len(read_tail(log)) == 64 * 1024


def test_read_tail_cut_inside_a_multibyte_character_does_not_raise(log: Path) -> None:
    log.write_text("ü" * 100)

    tail = read_tail(log, max_bytes=5)  # starts on the second byte of a "ü"

    assert tail.endswith("üü")
    assert tail.startswith("\ufffd")

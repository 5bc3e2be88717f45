"""classify_exit over realistic nnU-Net log tails: the kind of failure and whether a retry can help."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest

from supervisor.core.classify import RULES, classify_exit, last_error_line

# The epoch chatter nnU-Net prints before things go wrong; every tail below starts with it.
# nnU-Net's print_to_log_file ends every line with a space before the newline.
PREAMBLE = "".join(f"2026-11-28 04:22:{line} \n" for line in [
    "50.798051: Epoch 3",
    "50.798412: Current learning rate: 0.00973",
    "55.401234: train_loss -0.2152",
    "55.401512: val_loss -0.3018",
    "55.401698: Pseudo dice [np.float32(0.6121)]",
    "55.401901: Epoch time: 4.59 s",
    "55.402113: Yayy! New best EMA pseudo Dice: 0.5893",
    "56.120431: Epoch 4",
    "56.120782: Current learning rate: 0.00964",
])
SITE = "/opt/venv/lib/python3.11/site-packages"


def traceback(frames: str, last: str) -> str:
    """The tail of an attempt log that ends in an uncaught exception ($SITE stands for site-packages)."""
    return f"{PREAMBLE}Traceback (most recent call last):\n{frames}{last}\n".replace("$SITE", SITE)


RUN_TRAINING = """\
  File "/opt/venv/bin/nnUNetv2_train", line 8, in <module>
    sys.exit(run_training_entry())
             ^^^^^^^^^^^^^^^^^^^^
  File "$SITE/nnunetv2/run/run_training.py", line 275, in run_training_entry
    run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p, args.pretrained_weights,
"""
TRAIN_STEP = RUN_TRAINING + """\
  File "$SITE/nnunetv2/run/run_training.py", line 211, in run_training
    nnunet_trainer.run_training()
  File "$SITE/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py", line 1372, in run_training
    train_outputs.append(self.train_step(next(self.dataloader_train)))
"""
LOAD_CHECKPOINT = RUN_TRAINING + """\
  File "$SITE/nnunetv2/run/run_training.py", line 203, in run_training
    maybe_load_checkpoint(nnunet_trainer, continue_training, validation_only, pretrained_weights)
  File "$SITE/nnunetv2/run/run_training.py", line 94, in maybe_load_checkpoint
    nnunet_trainer.load_checkpoint(expected_checkpoint_file)
  File "$SITE/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py", line 1225, in load_checkpoint
    checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "$SITE/torch/serialization.py", line 1496, in load
    with _open_zipfile_reader(opened_file) as opened_zipfile:
"""
UNPICKLE = LOAD_CHECKPOINT.rsplit("  File", 1)[0] + """\
  File "$SITE/torch/serialization.py", line 1560, in load
    return _legacy_load(opened_file, map_location, pickle_module, **pickle_load_args)
  File "$SITE/torch/serialization.py", line 1812, in _legacy_load
    magic_number = pickle_module.load(f, **pickle_load_args)
"""
LOAD_STATE_DICT = RUN_TRAINING + """\
  File "$SITE/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py", line 1245, in load_checkpoint
    self.network.load_state_dict(new_state_dict)
  File "$SITE/torch/nn/modules/module.py", line 2593, in load_state_dict
    raise RuntimeError(
"""
IMPORT = """\
  File "/opt/venv/bin/nnUNetv2_train", line 5, in <module>
    from nnunetv2.run.run_training import run_training_entry
  File "$SITE/nnunetv2/run/run_training.py", line 11, in <module>
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
  File "$SITE/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py", line 18, in <module>
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
"""
FIND_TRAINER = RUN_TRAINING + """\
  File "$SITE/nnunetv2/run/run_training.py", line 45, in get_trainer_from_args
    nnunet_trainer = recursive_find_trainer_class_by_name(trainer_name)
  File "$SITE/nnunetv2/utilities/find_objects.py", line 45, in recursive_find_trainer
    raise RuntimeError(
"""
SPLITS = RUN_TRAINING + """\
  File "$SITE/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py", line 640, in do_split
    input("splits_final.json exists but does not match the dataset. Overwrite? [y/N] ")
"""
WORKER = """\
Exception in thread Thread-2 (results_loop):
Traceback (most recent call last):
  File "/usr/lib/python3.11/threading.py", line 1045, in _bootstrap_inner
    self.run()
  File "$SITE/batchgenerators/dataloading/nondet_multi_threaded_augmenter.py", line 125, in results_loop
    raise e
  File "$SITE/batchgenerators/dataloading/nondet_multi_threaded_augmenter.py", line 103, in results_loop
    raise RuntimeError("One or more background workers are no longer alive. Exiting. Please check the "
RuntimeError: One or more background workers are no longer alive. Exiting. Please check the print statements above \
for the actual error message
"""

OOM = traceback(TRAIN_STEP + """\
  File "$SITE/torch/nn/modules/conv.py", line 717, in _conv_forward
    return F.conv3d(
           ^^^^^^^^^
""", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.76 GiB. GPU 0 has a total capacity of 23.55 GiB "
     "of which 1.12 GiB is free. Including non-PyTorch memory, this process has 22.41 GiB memory in use. Of the "
     "allocated memory 20.02 GiB is allocated by PyTorch, and 1.87 GiB is reserved by PyTorch but unallocated. If "
     "reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
     "fragmentation.  See documentation for Memory Management  "
     "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
WORKERS_DIED = PREAMBLE + WORKER.replace("$SITE", SITE) + traceback(TRAIN_STEP + """\
  File "$SITE/batchgenerators/dataloading/nondet_multi_threaded_augmenter.py", line 196, in __next__
    item = self.__get_next_item()
""", "RuntimeError: One or more background workers are no longer alive. Exiting. Please check the print statements "
     "above for the actual error message")
ZIP_CENTRAL_DIR = traceback(LOAD_CHECKPOINT, "RuntimeError: PytorchStreamReader failed reading zip archive: "
                                             "failed finding central directory")
RAN_OUT_OF_INPUT = traceback(UNPICKLE, "EOFError: Ran out of input")
UNPICKLING = traceback(UNPICKLE, "_pickle.UnpicklingError: invalid load key, '\\x00'.")
STATE_DICT = traceback(LOAD_STATE_DICT, """\
RuntimeError: Error(s) in loading state_dict for PlainConvUNet:
\tMissing key(s) in state_dict: "encoder.stages.5.0.convs.0.conv.weight", "encoder.stages.5.0.convs.0.conv.bias".
\tUnexpected key(s) in state_dict: "decoder.seg_layers.5.weight", "decoder.seg_layers.5.bias".
\tsize mismatch for decoder.seg_layers.0.weight: copying a param with shape torch.Size([3, 320, 1, 1, 1]) from \
checkpoint, the shape in current model is torch.Size([4, 320, 1, 1, 1]).""")
DISK_FULL = traceback(RUN_TRAINING + """\
  File "$SITE/nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py", line 1262, in save_checkpoint
    torch.save(checkpoint, filename)
  File "$SITE/torch/serialization.py", line 965, in save
    with _open_zipfile_writer(f) as opened_zipfile:
""", "OSError: [Errno 28] No space left on device")
NCCL = traceback(TRAIN_STEP + """\
  File "$SITE/torch/nn/parallel/distributed.py", line 1636, in forward
    inputs, kwargs = self._pre_forward(*inputs, **kwargs)
""", "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, "
     "unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5\n"
     "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error.")
TRAINER_NOT_FOUND = traceback(FIND_TRAINER, (
    "RuntimeError: Could not find requested nnunet trainer nnUNetTrainer_Tiny in nnunetv2.training.nnUNetTrainer "
    "(/opt/venv/lib/python3.11/site-packages/nnunetv2/training/nnUNetTrainer). If the trainer is located elsewhere, "
    "please move it there or specify the external path via the `nnUNet_extTrainer` environment variable. "
    "nnUNet_extTrainer="))
MODULE_NOT_FOUND = traceback(IMPORT, "ModuleNotFoundError: No module named 'batchgenerators'")
IMPORT_ERROR = traceback(IMPORT, "ImportError: cannot import name 'NonDetMultiThreadedAugmenter' from "
                                 "'batchgenerators.dataloading.nondet_multi_threaded_augmenter'")
EOF_ON_STDIN = traceback(SPLITS, "EOFError: EOF when reading a line")
GENERIC = traceback(TRAIN_STEP + """\
  File "$SITE/nnunetv2/training/loss/dice.py", line 88, in forward
    tp, fp, fn, _ = get_tp_fp_fn_tn(x, y, axes, loss_mask, False)
""", "ValueError: operands could not be broadcast together with shapes (2,3,64,64,64) (2,4,64,64,64)")


@dataclass(frozen=True)
class Case:
    returncode: int
    tail: str
    finished: bool
    kind: str
    retryable: bool


CASES: dict[str, Case] = {
    "finished": Case(0, PREAMBLE + "2026-11-28 05:01:02.1: Training done. \n", True, "finished", False),
    "rc0_not_finished": Case(0, PREAMBLE, False, "exited_without_final", True),
    "sigkill": Case(-signal.SIGKILL, PREAMBLE, False, "killed_by_signal", True),
    "sigterm": Case(-signal.SIGTERM, PREAMBLE, False, "killed_by_signal", True),
    "sigkill_beats_traceback": Case(-signal.SIGKILL, GENERIC, False, "killed_by_signal", True),
    "cuda_oom": Case(1, OOM, False, "cuda_oom", True),
    "workers_died": Case(1, WORKERS_DIED, False, "workers_died", True),
    "zip_central_directory": Case(1, ZIP_CENTRAL_DIR, False, "corrupt_checkpoint", False),
    "ran_out_of_input": Case(1, RAN_OUT_OF_INPUT, False, "corrupt_checkpoint", False),
    "unpickling_error": Case(1, UNPICKLING, False, "corrupt_checkpoint", False),
    "state_dict": Case(1, STATE_DICT, False, "incompatible_checkpoint", False),
    "disk_full": Case(1, DISK_FULL, False, "disk_full", True),
    "nccl": Case(1, NCCL, False, "nccl_error", True),
    "trainer_not_found": Case(1, TRAINER_NOT_FOUND, False, "trainer_not_found", False),
    "module_not_found": Case(1, MODULE_NOT_FOUND, False, "import_error", False),
    "import_error": Case(1, IMPORT_ERROR, False, "import_error", False),
    "eof_on_stdin": Case(1, EOF_ON_STDIN, False, "waiting_for_input", False),
    "generic_traceback": Case(1, GENERIC, False, "python_exception", True),
    "nonzero_without_traceback": Case(2, PREAMBLE + "Segmentation fault (core dumped)\n", False, "exit_nonzero", True),
    "nonzero_empty_log": Case(1, "", False, "exit_nonzero", True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_classify_exit(case: Case) -> None:
    verdict = classify_exit(case.returncode, case.tail, case.finished)

    assert (verdict.kind, verdict.retryable) == (case.kind, case.retryable)
    assert verdict.summary


@pytest.mark.parametrize(
    "case", [c for c in CASES.values() if not c.retryable and c.kind != "finished"],
    ids=[k for k, c in CASES.items() if not c.retryable and c.kind != "finished"],
)
def test_non_retryable_failures_carry_advice(case: Case) -> None:
    assert classify_exit(case.returncode, case.tail, case.finished).advice.strip()


def test_every_non_retryable_rule_has_advice() -> None:
    assert all(rule.advice.strip() for rule in RULES if not rule.retryable)


def test_rule_kinds_are_unique() -> None:
    kinds = [rule.kind for rule in RULES]
    assert len(kinds) == len(set(kinds))


def test_generic_traceback_rule_comes_last() -> None:
    assert RULES[-1].kind == "python_exception"


def test_specific_cause_inside_a_traceback_wins_over_python_exception() -> None:
    assert "Traceback (most recent call last):" in STATE_DICT
    assert classify_exit(1, STATE_DICT, False).kind == "incompatible_checkpoint"
    assert classify_exit(1, OOM, False).kind == "cuda_oom"


def test_rc0_with_traceback_but_not_finished_is_an_exit_without_final() -> None:
    # e.g. a validation worker died but the main process still exited 0: the exit status comes first (issue #12),
    # the traceback is named in the summary
    verdict = classify_exit(0, GENERIC, finished=False)
    assert (verdict.kind, verdict.retryable) == ("exited_without_final", True)
    assert "the log's last error:" in verdict.summary


def test_finished_wins_over_an_old_traceback_in_the_tail() -> None:
    assert classify_exit(0, WORKERS_DIED, finished=True).kind == "finished"


def test_rc0_without_finished_says_what_is_missing() -> None:
    assert "checkpoint_final.pth" in classify_exit(0, PREAMBLE, False).summary


def test_signal_summaries_name_the_signal() -> None:
    kill = classify_exit(-signal.SIGKILL, "", False).summary
    term = classify_exit(-signal.SIGTERM, "", False).summary

    assert "SIGKILL" in kill and "OOM killer" in kill
    assert "SIGTERM" in term and "OOM" not in term
    assert "signal 200" in classify_exit(-200, "", False).summary


def test_nonzero_summary_names_the_status() -> None:
    assert classify_exit(2, PREAMBLE, False).summary == "exited with status 2"


def test_summary_quotes_the_last_error_line() -> None:
    assert classify_exit(1, DISK_FULL, False).summary.endswith(": OSError: [Errno 28] No space left on device")
    assert "ModuleNotFoundError: No module named 'batchgenerators'" in classify_exit(1, MODULE_NOT_FOUND, False).summary
    assert "torch.OutOfMemoryError: CUDA out of memory." in classify_exit(1, OOM, False).summary


@pytest.mark.parametrize(
    ("tail", "line"),
    [
        (GENERIC, "ValueError: operands could not be broadcast together with shapes (2,3,64,64,64) (2,4,64,64,64)"),
        (STATE_DICT, "RuntimeError: Error(s) in loading state_dict for PlainConvUNet:"),
        (NCCL, "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error."),
        (PREAMBLE, ""),
    ],
)
def test_last_error_line(tail: str, line: str) -> None:
    assert last_error_line(tail) == line


def test_last_error_line_is_capped() -> None:
    assert len(last_error_line("RuntimeError: " + "x" * 1000)) == 300


def test_the_cooperative_shims_disk_full_exit_wins_over_the_dying_workers_it_leaves_behind() -> None:
    tail = ("nnunet-supervise: disk full: saving checkpoint_best.pth failed: [enforce fail at inline_container.cc:672]"
            " . unexpected pos 20754688 vs 20754576; the previous checkpoint_best.pth is intact. Exiting 74\n"
            "Exception in thread Thread-1 (results_loop):\nTraceback (most recent call last):\n"
            "RuntimeError: One or more background workers are no longer alive. Exiting.\n")
    c = classify_exit(74, tail, finished=False)
    assert c.kind == "disk_full" and c.retryable and "saving checkpoint_best.pth failed" in c.summary


def test_a_cooperative_trainer_stopped_from_outside_is_retryable() -> None:
    c = classify_exit(75, "nnunet-supervise: SIGTERM during startup: nothing to save; exiting 75\n", finished=False)
    assert c.kind == "saved_and_exited" and c.retryable

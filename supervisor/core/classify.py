"""Why did the trainer exit? One table, in one place, says what each cause is and whether a retry can help."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from supervisor.errors import ExitCode
from supervisor.trainer.protocol import DISK_FULL_LINE, MARK


@dataclass(frozen=True)
class Classification:
    """The verdict on one trainer exit."""

    kind: str
    retryable: bool
    summary: str  # what happened, in words
    advice: str = ""  # what the user can do, for non-retryable causes


@dataclass(frozen=True)
class _Rule:
    kind: str
    retryable: bool
    pattern: re.Pattern[str]
    summary: str
    advice: str = ""


def _rule(kind: str, retryable: bool, pattern: str, summary: str, advice: str = "") -> _Rule:
    return _Rule(kind, retryable, re.compile(pattern, re.MULTILINE), summary, advice)


# torch's words when a tensor cannot be put into /dev/shm (a worker handing over its batch); nnU-Net's trainer then
# waits for batches that never come
SHM_ERROR = (r"unable to write to file </torch_|unable to (open|allocate) shared memory|"
             r"/dev/shm.*No space left on device|No space left on device.*/dev/shm|"
             r"killed by signal: Bus error|^Bus error")

# Ordered: the first rule whose pattern occurs in the attempt log's tail wins, so specific causes come
# before the generic traceback.
RULES: tuple[_Rule, ...] = (
    _rule("incompatible_checkpoint", False, r"Error\(s\) in loading state_dict",
          "the checkpoint does not fit the network this trainer builds (strict load_state_dict failed)",
          "the trainer class or the plans changed since the checkpoint was written; restore the old trainer/plans, "
          "or start a new training from it with -pretrained_weights (loses optimizer, epoch and LR schedule)"),
    # torch >= 2.6 loads with weights_only=True unless told otherwise, and nnU-Net's checkpoints hold numpy scalars:
    # a trainer whose own load_checkpoint calls torch.load without weights_only=False fails every resume. Before
    # corrupt_checkpoint (torch's words contain "UnpicklingError"): the file is usually intact.
    _rule("weights_only_refused", False, r"Weights only load failed",
          "torch.load refused the checkpoint under weights_only=True (torch >= 2.6's default): the trainer's own "
          "load_checkpoint calls torch.load without weights_only=False",
          "the checkpoint is not damaged by this (`nnunet-supervise verify` says whether it is); fix the trainer's "
          "load_checkpoint to call torch.load(..., weights_only=False) as nnU-Net's nnUNetTrainer.load_checkpoint "
          "does, or set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in nnunet.env"),
    _rule("no_gpu", False,
          r"Found no NVIDIA driver on your system|No CUDA GPUs are available|"
          r"The NVIDIA driver on your system is too old|Torch not compiled with CUDA enabled|"
          r"CUDA driver initialization failed",
          "nnunet.device is cuda, but torch finds no usable NVIDIA GPU and driver on this machine",
          "run it where an NVIDIA GPU and its driver are (nvidia-smi works), or set nnunet.device: cpu (slow) or "
          "mps (Apple silicon); a relaunch cannot help"),
    # before workers_died: a worker that cannot put its batch into shared memory dies, and then the main process
    # says its workers are gone; the first words name the cause
    _rule("shm_exhausted", True, SHM_ERROR, "shared memory (/dev/shm) ran out"),
    _rule("compile_error", True,
          r"^torch\._(dynamo|inductor)\.exc\.\w+|^(InductorError|BackendCompilerFailed)\b|"
          r"^triton\.\S*Error",
          "torch.compile failed"),
    # nnU-Net's preprocessing (and our resumable shim, which keeps its check) says "6 feet under" for a dead worker
    _rule("workers_died", True, r"[Bb]ackground workers are no longer alive|DataLoader worker .* killed|"
          r"[Ss]ome background worker is 6 feet under",
          "nnU-Net's worker processes died (often the kernel's OOM killer)"),
    _rule("corrupt_checkpoint", False,
          r"PytorchStreamReader failed reading zip archive|failed finding central directory|"
          r"EOFError: Ran out of input|UnpicklingError",
          "the checkpoint nnU-Net tried to resume from is damaged (truncated or half-written)",
          "move the damaged checkpoint_*.pth out of the fold folder so --c can use another one"),
    _rule("trainer_not_found", False, r"Could not find requested nnunet trainer",
          "nnU-Net could not find the trainer class",
          "check nnunet.trainer and nnunet.trainer_paths; `nnunet-supervise check` finds the class the same way"),
    _rule("import_error", False, r"^(ModuleNotFoundError|ImportError): ",
          "the trainer failed to import a module",
          "install the missing package into the environment that runs nnUNetv2_train"),
    _rule("waiting_for_input", False, r"EOFError: EOF when reading a line",
          "nnU-Net asked a question on stdin; the supervisor gives it /dev/null",
          "run the command once by hand to answer it, or fix what it asks about (often splits_final.json)"),
    _rule("cuda_oom", True, r"CUDA out of memory|OutOfMemoryError",
          "the GPU ran out of memory"),
    _rule("disk_full", True, r"No space left on device|\[Errno 28\]|nnunet-supervise: disk full",
          "the disk is full"),
    _rule("nccl_error", True, r"NCCL error|ncclInternalError|ncclSystemError|ProcessGroupNCCL",
          "a distributed (NCCL) error"),
    _rule("python_exception", True, r"^Traceback \(most recent call last\):",
          "the trainer raised a Python exception"),
)


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)', re.MULTILINE)


def calling_frame(traceback_text: str) -> str:
    """The innermost traceback frame outside torch itself: the code that called torch.load ("FILE:LINE in NAME")."""
    frames = [f for f in _FRAME.findall(traceback_text) if "/torch/" not in f[0]]
    if not frames:
        return ""
    path, line, name = frames[-1]
    return f"{name}() at {path}:{line}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*:")


def last_error_line(log_tail: str) -> str:
    """The last line that looks like an exception message, for the human-readable summary."""
    for line in reversed(log_tail.splitlines()):
        if ERROR_LINE.match(line.strip()):
            return line.strip()[:300]
    return ""


# Exit classifications that are not failures (a stop on request, a finish). A "lingering" recycle only reaches an
# exit record when the fold was not finished after all, and the loop relaunches it as a failure.
NOT_FAILURES = frozenset({"finished", "stopped"})


def _shim_line(log_tail: str, what: str) -> str:
    """The cooperative shim's own line about `what`, without its prefix."""
    for line in reversed(log_tail.splitlines()):
        if line.startswith(f"{MARK} {what}"):
            return line.removeprefix(f"{MARK} ").strip()
    return what


# the words of an exit 0 that did not finish (a stage other than training says its own: lifecycle.Words.incomplete)
INCOMPLETE = "exited 0 but the fold has no checkpoint_final.pth and validation summary"


def classify_exit(returncode: int, log_tail: str, finished: bool) -> Classification:
    """Classify an exit from its return code, whether the fold is finished, and the end of its log."""
    if returncode == 0 and finished:
        return Classification("finished", False, "training and validation finished")
    if returncode < 0:
        name = _signal_name(-returncode)
        hint = " (SIGKILL from outside is often the kernel's OOM killer)" if name == "SIGKILL" else ""
        return Classification("killed_by_signal", True, f"killed by {name}{hint}")
    if returncode == ExitCode.DISK_FULL and DISK_FULL_LINE in log_tail:
        # before the rules: the dataloader threads dying on the way out print "workers are no longer alive"
        return Classification("disk_full", True, _shim_line(log_tail, "disk full"))
    if returncode == 0:
        # the exit status comes first: a leftover traceback of a dying worker in the tail does not make a clean
        # exit a crash (nor does nnU-Net exit 0 after a failure of its own)
        detail = last_error_line(log_tail)
        return Classification("exited_without_final", True,
                              INCOMPLETE
                              + (f" (the log's last error: {detail})" if detail else ""))
    if returncode == ExitCode.STOPPED and MARK in log_tail:
        return Classification("saved_and_exited", True, "the cooperative trainer saved and exited on a signal "
                              "sent to it (not by this supervisor)")
    for rule in RULES:
        m = rule.pattern.search(log_tail)
        if m:
            # the line that named the cause (a dying worker's traceback may come last), else the last error line
            start = log_tail.rfind("\n", 0, m.start()) + 1
            end = log_tail.find("\n", m.end())
            line = log_tail[start:end if end >= 0 else None].strip()
            detail = line[:300] if rule.kind != "python_exception" and ERROR_LINE.match(line) else \
                last_error_line(log_tail)
            summary = f"{rule.summary}: {detail}" if detail else rule.summary
            if rule.kind == "weights_only_refused":
                where = calling_frame(log_tail[:m.start()])
                summary = rule.summary + (f" (the call: {where})" if where else "")
            return Classification(rule.kind, rule.retryable, summary, rule.advice)
    return Classification("exit_nonzero", True, f"exited with status {returncode}")


# torch puts each category on its own line ("\n\t"): Missing key(s) in state_dict: "a", "b".
_KEYS_RE = {
    "missing_keys": re.compile(r"Missing key\(s\) in state_dict: (.*)$", re.M),
    "unexpected_keys": re.compile(r"Unexpected key\(s\) in state_dict: (.*)$", re.M),
}
_SIZE_RE = re.compile(r"size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                      r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")


def _shape(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def parse_state_dict_error(log_tail: str) -> dict[str, list[object]]:
    """The three lists out of torch's 'Error(s) in loading state_dict' message."""
    out: dict[str, list[object]] = {}
    for name, rx in _KEYS_RE.items():
        m = rx.search(log_tail)
        out[name] = re.findall(r'"([^"]+)"', m.group(1)) if m else []
    out["shape_mismatches"] = [[k.strip(), _shape(a), _shape(b)] for k, a, b in _SIZE_RE.findall(log_tail)]
    return out

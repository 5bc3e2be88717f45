"""What the supervisor and the processes it starts agree on: environment variables, exit codes, line prefixes.

Both sides import this module; it imports nothing but the exit codes, so loading it inside nnU-Net's process
pulls in nothing of the daemon.
"""

from __future__ import annotations

from supervisor.errors import ExitCode

# Set by the supervisor in the trainer's environment.
ATTEMPT_VAR = "NNUNET_SUPERVISE_ATTEMPT"  # 1, 2, ... (the contract)
MARKER_VAR = "NNUNET_SUPERVISE_RUN"  # the fold folder: finds every process of one run's tree, even re-parented ones
HEARTBEAT_VAR = "NNUNET_SUPERVISE_HEARTBEAT"  # cooperative mode: where the trainer writes its heartbeat
SAVE_EVERY_EPOCHS_VAR = "NNUNET_SUPERVISE_SAVE_EVERY_EPOCHS"
SAVE_EVERY_S_VAR = "NNUNET_SUPERVISE_SAVE_EVERY_S"
BATCH_SIZE_VAR = "NNUNET_SUPERVISE_BATCH_SIZE"  # cooperative mode, a remedy the user opted in to: the batch size
SNAPSHOT_EVERY_S_VAR = "NNUNET_SUPERVISE_SNAPSHOT_EVERY_S"  # cooperative mode: a step-boundary snapshot this often
# cooperative mode: where the trainer records each checkpoint it wrote (its size and zip CRCs, epoch, step, whether
# every tensor was finite) and the verification context (network fingerprint, expectations) the supervisor had at the
# launch; a relaunch trusts a file that matches its record byte for byte without a torch probe (checkpoints.verify)
WRITTEN_VAR = "NNUNET_SUPERVISE_WRITTEN"
SAVE_ON_STOP_VAR = "NNUNET_SUPERVISE_SAVE_ON_STOP"  # "step" (the default) or "epoch"
CONTEXT_VAR = "NNUNET_SUPERVISE_VERIFY_CONTEXT"

# The key a cooperative save made inside an epoch adds to nnU-Net's checkpoint dict: where in the epoch it was
# ({"epoch", "steps_done", "steps_total", "outputs"}; plain numbers, so a weights-only load reads it). nnU-Net's own
# load_checkpoint ignores it (a plain --c resumes at the start of that epoch).
STEP_KEY = "nnunet_supervise_step"

# How the cooperative trainer ends when it is not finished.
EXIT_STOPPED = ExitCode.STOPPED  # saved on request at the next step (or epoch end); resumable
EXIT_DISK_FULL = ExitCode.DISK_FULL  # a save failed for lack of space; the previous checkpoint is intact

# The short-lived helper processes (checkpoint probe, trainer lookup) answer with one line that starts with this.
RESULT_PREFIX = "NNUNET_SUPERVISE_RESULT "

# The shim's lines in the attempt log start with this; the supervisor's exit classification reads them.
MARK = "nnunet-supervise:"
DISK_FULL_LINE = f"{MARK} disk full"

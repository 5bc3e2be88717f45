"""Exit codes and the one exception family; only the CLI turns exceptions into messages and exit codes."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status the supervisor (and the cooperative trainer shim) can end with; part of the interface."""

    FINISHED = 0  # the fold finished (training and validation)
    GAVE_UP = 1  # budget spent, no progress, or a failure a retry cannot fix
    USAGE = 2  # bad config or command line
    LOCKED = 3  # another live supervisor owns the run
    CRASHED = 70  # EX_SOFTWARE: the supervisor itself failed (a bug); systemd restarts it, unlike 1
    DISK_FULL = 74  # EX_IOERR, from the cooperative trainer: a save failed for lack of space, the old file is intact
    STOPPED = 75  # EX_TEMPFAIL: stopped on request, resumable


class SupervisorError(Exception):
    """Base of every error the supervisor reports to a person."""

    exit_code: int = ExitCode.GAVE_UP


class ConfigError(SupervisorError):
    """The run.yaml is unreadable or invalid; carries one line per problem."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


class LockedError(SupervisorError):
    """Another live supervisor owns this run."""

    exit_code = ExitCode.LOCKED


class RunDirError(SupervisorError):
    """The run directory cannot be used at all (not writable, the lock file unopenable): retrying cannot help."""

    exit_code = ExitCode.USAGE


class LaunchError(SupervisorError):
    """The trainer could not be started at all (missing executable, bad folder)."""

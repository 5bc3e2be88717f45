"""The one exception family; only the CLI turns these into messages and exit codes."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error the supervisor reports to a person."""

    exit_code = 1


class ConfigError(SupervisorError):
    """The run.yaml is unreadable or invalid; carries one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


class LockedError(SupervisorError):
    """Another live supervisor owns this run."""

    exit_code = 3


class LaunchError(SupervisorError):
    """The trainer could not be started at all (missing executable, bad folder)."""

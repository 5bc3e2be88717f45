"""Single-instance lock for a run directory: flock, released by the kernel when the holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from supervisor.errors import LockedError
from supervisor.fileread import read_bytes


class RunLock:
    """An exclusive, non-blocking flock on supervisor/supervisor.lock that records who holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "an unknown process"
            raise LockedError(f"run {self.path.parent.parent} is locked by another live supervisor ({who}); "
                              "stop it first, or watch it with `nnunet-supervise status`") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd

    def holder(self) -> dict[str, Any] | None:
        """Who wrote the lock file last (meaningful while the lock is held)."""
        try:
            data = json.loads(read_bytes(self.path, 64 << 10, "lock file") or b"null")
        except (OSError, ValueError):  # gone, not a regular file, garbage: nobody we can name
            return None
        return data if isinstance(data, dict) else None

    def is_held_elsewhere(self) -> bool:
        """True when another process holds the lock right now (does not take it)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
        except OSError:  # missing or unopenable (a directory): nobody holds our lock through it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays for `status` to read
            self._fd = None

"""The kernel log's OOM-killer lines (/dev/kmsg), for the pids of one trainer tree.

Each read of /dev/kmsg returns one record, "PRIORITY,SEQUENCE,MICROSECONDS,FLAGS;MESSAGE"; EPIPE means records were
overwritten while we read (skip on), EAGAIN that there are no more. Reading needs CAP_SYSLOG where
kernel.dmesg_restrict is 1, so a supervisor without it says "not readable" rather than "no OOM kill".
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator

from supervisor.core.causes import KernelKill

KMSG = "/dev/kmsg"
MAX_RECORDS = 200_000  # a ring buffer is a few MB; never loop forever on a device that keeps answering
_KILLED = re.compile(r"(Memory cgroup out of memory: |Out of memory: |)Killed process (\d+) \(([^)]*)\)")


def records(path: str = KMSG) -> Iterator[tuple[int, str]]:
    """(microseconds since boot, message) of every record in the kernel's ring buffer; OSError if not readable."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        for _ in range(MAX_RECORDS):
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue
                raise
            if not raw:
                return
            head, _, message = raw.decode("utf-8", "replace").partition(";")
            fields = head.split(",")
            usec = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
            yield usec, message.split("\n", 1)[0]
    finally:
        os.close(fd)


def oom_kills(pids: set[int], main_pid: int, since_usec: int, path: str = KMSG) -> tuple[bool, tuple[KernelKill, ...]]:
    """(readable, the OOM killer's kills of these pids since since_usec)."""
    try:
        found = [parse_kill(message, pids, main_pid) for usec, message in records(path) if usec >= since_usec]
    except OSError:
        return False, ()
    return True, tuple(k for k in found if k is not None)


def parse_kill(message: str, pids: set[int], main_pid: int) -> KernelKill | None:
    m = _KILLED.search(message)
    if m is None or int(m.group(2)) not in pids:
        return None
    pid = int(m.group(2))
    return KernelKill(pid, m.group(3), pid == main_pid, m.group(1).startswith("Memory cgroup"))


def now_usec() -> int:
    """The kernel log's clock, in microseconds: time.monotonic() is CLOCK_MONOTONIC on Linux, which counts from
    boot as the kernel log's timestamps do."""
    return int(time.monotonic() * 1e6)

"""The kernel log's OOM-killer lines (/dev/kmsg), for one trainer tree.

A kill is the tree's when its pid was seen in the tree, or when the kernel's "oom-kill:" line just before it names
the tree's own memory cgroup (task_memcg): an augmentation worker can be born and killed between two samples of the
tree. (The root cgroup "/" names nothing: every process of the machine is in it.)

Each read of /dev/kmsg returns one record, "PRIORITY,SEQUENCE,MICROSECONDS,FLAGS;MESSAGE"; EPIPE means records were
overwritten while we read (skip on), EAGAIN that there are no more. Reading needs CAP_SYSLOG where
kernel.dmesg_restrict is 1, so a supervisor without it says "not readable" rather than "no OOM kill".
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterable, Iterator

from supervisor.core.causes import KernelKill

KMSG = "/dev/kmsg"
MAX_RECORDS = 200_000  # a ring buffer is a few MB; never loop forever on a device that keeps answering
_KILLED = re.compile(r"(Memory cgroup out of memory: |Out of memory: |)Killed process (\d+) \(([^)]*)\)")
_OOM_KILL = re.compile(r"oom-kill:.*task_memcg=([^,]*),.*pid=(\d+)")


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


def oom_kills(pids: set[int], main_pid: int, since_usec: int, memcg: str | None = None,
              path: str = KMSG) -> tuple[bool, tuple[KernelKill, ...]]:
    """(readable, the OOM killer's kills of the tree since since_usec); memcg: the tree's memory cgroup, as the
    kernel names it (relative to the hierarchy's root)."""
    try:
        found = kills_in((message for usec, message in records(path) if usec >= since_usec), pids, main_pid, memcg)
    except OSError:
        return False, ()
    return True, found


def kills_in(messages: Iterable[str], pids: set[int], main_pid: int, memcg: str | None) -> tuple[KernelKill, ...]:
    """The tree's kills among kernel log messages (in order: an "oom-kill:" line comes before its "Killed process")."""
    ours = memcg if memcg and memcg != "/" else None
    in_memcg: set[int] = set()
    found = []
    for message in messages:
        m = _OOM_KILL.search(message)
        if m is not None:
            if ours is not None and m.group(1) == ours:
                in_memcg.add(int(m.group(2)))
            continue
        kill = parse_kill(message, pids | in_memcg, main_pid)
        if kill is not None:
            found.append(kill)
    return tuple(found)


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

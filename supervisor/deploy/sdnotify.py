"""systemd's notify protocol (sd_notify(3)): READY=1, STATUS=..., WATCHDOG=1, STOPPING=1.

A few lines of our own rather than a library: the protocol is one datagram of `KEY=value` lines to the AF_UNIX
socket named in $NOTIFY_SOCKET; python-systemd needs libsystemd headers and a compiler to install, and the pure
`sdnotify` package is a wrapper of these same lines. Without $NOTIFY_SOCKET (not under systemd) every call is a
no-op, and a failed send never disturbs supervision.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace: a leading NUL byte on the wire
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._status: str | None = None
        self._pinged: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # never block: a receiver whose queue is full must not stall the supervisor's loop
                sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
            return True
        except OSError:  # EAGAIN (queue full), ECONNREFUSED (no receiver): the message is dropped
            return False

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`; sent only when it changed."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """WATCHDOG=1 at half the watchdog interval, from the main loop (a hung loop stops pinging)."""
        if self.watchdog_s is None:
            return
        if self._pinged is None or now - self._pinged >= self.watchdog_s / 2:
            self._pinged = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self._status = status
        self.send("STOPPING=1", f"STATUS={status}")

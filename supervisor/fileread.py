"""Reading a file that may not be what its name says: a FIFO would block forever, /dev/zero never ends, a directory
or a socket cannot be read at all. Everything the supervisor reads from a path a person, a power cut or a full disk
may have touched goes through here: its kind is checked first (without blocking), its size is bounded.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


class FileKindError(OSError):
    """The path is there but is not a regular file we can read (or is far too large); says what it is."""


def kind_of(path: Path) -> str | None:
    """None for a regular file (following symlinks); else what it is, in words."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    target = f" ({os.path.realpath(path)})" if os.path.islink(path) else ""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words + target
    return "not a regular file" + target


def check_regular(path: Path, what: str = "file") -> None:
    """Raise FileKindError (or FileNotFoundError) unless path is a regular file."""
    kind = kind_of(path)
    if kind == "missing":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    if kind is not None:
        raise FileKindError(errno.EINVAL, f"{path} is {kind}, not a {what}")


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes:
    """The whole file, if it is a regular file of at most `limit` bytes; FileKindError (an OSError) says why not.

    Opened with O_NONBLOCK, so that a FIFO swapped in between the check and the open cannot hang the reader."""
    check_regular(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the check
            raise FileKindError(errno.EINVAL, f"{path} is not a regular file, not a {what}")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileKindError(errno.EFBIG, f"{path} is larger than {limit} bytes: not a {what}")
    finally:
        os.close(fd)


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading without ever blocking on what is not one; FileKindError otherwise."""
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileKindError(errno.EINVAL, f"{path} is not a regular file")
    return os.fdopen(fd, "rb")

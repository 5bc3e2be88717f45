"""`python -m supervisor.trainer.logcap LOG MAX_BYTES`: the trainer's stdout and stderr into LOG, capped.

A trainer (or a warning printed in a loop) can print gigabytes; written straight to a file that fills the results
disk, and then the checkpoint saves fail. This small process sits between the trainer and its attempt log: it
appends what it reads from stdin and, once the log passes MAX_BYTES by half, rewrites it as its head (the launch
and the first lines: what the trainer is), a line saying how much was cut, and its newest part (what the trainer
did last: the traceback the supervisor classifies). So the log never takes more than 1.5 x MAX_BYTES.

It runs in a session of its own and exits when the last writer closes the pipe (the trainer and its workers are
gone), so a supervisor that dies does not take the trainer's output with it. Standard library only.
"""

from __future__ import annotations

import os
import sys

CHUNK = 1 << 16


def rewrite(path: str, limit: int, cut_so_far: int) -> int:
    """Keep the head (a quarter of the limit) and the newest part of the file; returns the bytes cut in total."""
    with open(path, "rb") as f:
        data = f.read()
    head_end = data.find(b"\n", limit // 4)
    head_end = limit // 4 if head_end < 0 else head_end + 1
    keep_from = data.find(b"\n", len(data) - (limit - head_end) + 256)  # a whole line, and room for the note
    keep_from = len(data) - (limit - head_end) if keep_from < 0 else keep_from + 1
    if keep_from <= head_end:
        return cut_so_far
    cut = cut_so_far + keep_from - head_end
    note = (f"[nnunet-supervise logcap] {cut} bytes of the trainer's output were cut here to keep this log under "
            f"about {limit} bytes (process.attempt_log_max_mb); its start is above, its newest part below\n").encode()
    tmp = f"{path}.logcap-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data[:head_end] + note + data[keep_from:])
    os.replace(tmp, path)
    return cut


def main(argv: list[str]) -> int:
    path, limit = argv[0], int(argv[1])
    cut = 0
    out = open(path, "ab", buffering=0)
    try:
        while chunk := os.read(0, CHUNK):
            try:
                out.write(chunk)
                size = out.tell()
            except OSError:  # a full disk: drop output rather than stop reading (the trainer would block)
                continue
            if size > limit + limit // 2:
                out.close()
                try:
                    cut = rewrite(path, limit, cut)
                except OSError:
                    pass
                out = open(path, "ab", buffering=0)
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

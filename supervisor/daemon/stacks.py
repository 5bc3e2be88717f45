"""Where a hung trainer is stuck: py-spy stack dumps of its tree, and the kernel state of each process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")  # installed with this package, even without PATH
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def dump_stacks(pids: list[int], out: Path, timeout_s: float = 20.0) -> str:
    """Write py-spy stack dumps of `pids` to `out` (even of SIGSTOPped processes: --nonblocking reads memory
    without pausing them); returns one line for the log."""
    exe = _py_spy()
    lines = [f"# stacks of the trainer's tree when it was declared stalled, {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    if exe is None:
        lines.append("py-spy is not installed: no stack dump (pip install py-spy)")
        out.write_text("\n".join(lines) + "\n")
        return "py-spy unavailable: no stack dump taken"
    dumped = 0
    for pid in pids:
        try:
            r = subprocess.run([exe, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                               timeout=timeout_s, stdin=subprocess.DEVNULL)
            text = r.stdout if r.returncode == 0 else f"py-spy failed (exit {r.returncode}): {r.stderr.strip()}"
            dumped += r.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"py-spy failed: {exc}"
        lines += [f"\n## pid {pid}", text.rstrip()]
    out.write_text("\n".join(lines) + "\n")
    return f"stack dump of {dumped}/{len(pids)} process(es) in {out}"


def process_state(pid: int) -> str:
    """The kernel's one-letter state (T = stopped, D = uninterruptible I/O, Z = zombie), '?' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


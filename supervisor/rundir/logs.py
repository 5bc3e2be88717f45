"""Bounding what the supervisor keeps of its attempt logs: a run that crashed 400 times must not keep 400 logs of up
to attempt_log_max_mb each. The first attempt's log (the first failure, usually the telling one) and the newest N
stay as they are; every one between is gzipped in place (attempt-K.log.gz), so nothing is lost and a crash loop's
logs take a tenth of the room. `report`, `bundle` and the evidence read the plain ones."""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

_LOG = re.compile(r"^attempt-(\d+)\.log$")


def compress_old_attempt_logs(folder: Path, keep: int) -> list[Path]:
    """Gzip every attempt log but the first and the newest `keep` (at least the newest); the compressed files, in
    order. A log that cannot be read or written is left as it is (this only saves room)."""
    try:
        found = sorted((int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _LOG.match(name)))
    except OSError:
        return []
    # the newest is always kept: the attempt that just ended, whose tail its classification reads next
    middle = found[1:len(found) - max(keep, 1)]
    done = []
    for _, path in middle:
        target = path.with_name(path.name + ".gz")
        tmp = path.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(path, "rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)  # whole or not there: the plain log is removed only after
            path.unlink()
            done.append(target)
        except OSError:
            tmp.unlink(missing_ok=True)
    return done

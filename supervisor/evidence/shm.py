"""/dev/shm: where torch puts the tensors nnU-Net's augmentation workers hand to the trainer (a 64 MB container
default is a common cause of dying workers)."""

from __future__ import annotations

import os

SHM = "/dev/shm"


def shm_space(path: str = SHM) -> tuple[int, int] | None:
    """(size, free) in bytes, None where there is no such file system."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

"""NVIDIA's Xid errors: which call for an ordinary relaunch and which mean "keep off this GPU"."""

from __future__ import annotations

from typing import Literal

XidAction = Literal["retry", "hardware", "unknown"]

# What to do after an Xid, from NVIDIA's Xid catalog ("Analyzing Xid Errors with the Xid Catalog",
# docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html: its "Resolution Bucket (Immediate Action)" column,
# RESTART_APP -> retry; RESET_GPU / RESTART_BM / CONTACT_SUPPORT for a hardware cause -> hardware) and the dynamic
# page retirement / row remapping guides. "hardware" means: do not relaunch on that GPU until someone looks at it.
XID_ACTIONS: dict[int, tuple[Literal["retry", "hardware"], str]] = {
    13: ("retry", "graphics engine exception (often an out-of-range access in the application)"),
    31: ("retry", "GPU memory page fault (often an illegal address in the application)"),
    43: ("retry", "GPU stopped processing (the application's channel was reset)"),
    45: ("retry", "preemptive cleanup after an earlier error or a killed process"),
    69: ("retry", "graphics engine class error"),
    109: ("retry", "context switch timeout"),
    48: ("hardware", "double-bit ECC error (uncorrectable memory error)"),
    63: ("hardware", "ECC page retirement or row remapping event (reset the GPU to activate it)"),
    64: ("hardware", "ECC page retirement or row remapping failure"),
    74: ("hardware", "NVLink error"),
    79: ("hardware", "GPU has fallen off the bus"),
    92: ("hardware", "high single-bit ECC error rate"),
    94: ("hardware", "contained ECC error"),
    95: ("hardware", "uncontained ECC error"),
    119: ("hardware", "GSP RPC timeout"),
    120: ("hardware", "GSP error"),
    140: ("hardware", "unrecovered ECC error"),
    154: ("hardware", "GPU recovery action changed (the driver asks for a reset or reboot)"),
}


def classify_xid(xid: int) -> XidAction:
    """Whether an Xid calls for an ordinary relaunch, for keeping off the GPU, or is not in the table."""
    entry = XID_ACTIONS.get(xid)
    return entry[0] if entry else "unknown"


def describe_xid(xid: int) -> str:
    """'Xid 79 (GPU has fallen off the bus)', for messages."""
    entry = XID_ACTIONS.get(xid)
    return f"Xid {xid} ({entry[1]})" if entry else f"Xid {xid} (not in the supervisor's table)"

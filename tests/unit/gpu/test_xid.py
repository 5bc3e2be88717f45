"""The Xid table."""

from __future__ import annotations

import pytest

from supervisor.gpu.xid import XID_ACTIONS, classify_xid


@pytest.mark.parametrize("xid", [13, 31, 43, 45, 69, 109])
def test_application_xids_retry(xid: int) -> None:
    assert classify_xid(xid) == "retry"


@pytest.mark.parametrize("xid", [48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140])
def test_hardware_xids_keep_off_the_gpu(xid: int) -> None:
    assert classify_xid(xid) == "hardware"


def test_unknown_xid_and_every_entry_has_a_reason() -> None:
    assert classify_xid(4242) == "unknown"
    assert all(reason for _, reason in XID_ACTIONS.values())

"""The lifecycle is drawn once: the README's copy must be the one in supervisor/core/lifecycle.py."""

from __future__ import annotations

import supervisor.core.lifecycle as lifecycle
from tests.conftest import REPO


def test_the_readme_draws_the_lifecycle_exactly_as_the_code_does() -> None:
    doc = lifecycle.__doc__ or ""
    drawing = doc.split("README's copy is checked against this one by a test):\n\n", 1)[1].rstrip("\n")
    readme = (REPO / "README.md").read_text()
    copy = readme.split("<!-- lifecycle:begin -->\n```\n", 1)[1].split("\n```\n<!-- lifecycle:end -->", 1)[0]
    assert copy == drawing
    for word in ("Abort", "Recycle", "DiskChecked", "RequestSave", "Prepared", "StopRequested"):
        assert word in drawing  # every way through the lifecycle is on it

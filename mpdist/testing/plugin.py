"""The mpdist pytest plugin, registered through the ``pytest11`` entry point.

It adds the command-line options shared by every multi-rank test.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mpdist", "multi-process distributed tests")
    group.addoption(
        "--ranks",
        type=int,
        default=None,
        help="default world size of multi-rank tests (else $MPDIST_WORLD_SIZE, else 2)",
    )
    group.addoption(
        "--mp-timeout",
        type=float,
        default=None,
        help="seconds a multi-rank test may run before its ranks are dumped and killed (default 300)",
    )

"""Fixtures for the process-group tests: run a function in N rank threads (threaded backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from _spawn import run_threads


@pytest.fixture
def threads() -> Callable[..., list[Any]]:
    """The ``run_threads`` helper, with a check that no mpdist thread outlives the test."""
    before = set(threading.enumerate())
    yield run_threads
    leaked = [t for t in threading.enumerate() if t not in before and t.name.startswith("mpdist")]
    assert not leaked, f"leaked threads: {leaked}"

"""Fixtures for the FSDP tests: every test must leave no thread behind.

The fixtures themselves (``no_thread_left_behind``, ``allreduce_calls``, ``ddp_progress``)
live in the root conftest, shared by tests/parallel and tests/fsdp.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def every_test_leaves_no_thread(no_thread_left_behind: None) -> None:
    """Each test here runs under the root conftest's thread check."""

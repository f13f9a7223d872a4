"""Fixtures for the harness tests (pytester comes from the top-level conftest), and a check that nothing outlives a test."""

from __future__ import annotations

import threading

import psutil
import pytest


@pytest.fixture
def pid_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory where ranks write their pids; $PID_DIR tells the inner tests where."""
    path = tmp_path_factory.mktemp("pids")
    monkeypatch.setenv("PID_DIR", str(path))
    return str(path)


@pytest.fixture
def private_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point tempfile at an empty directory, so leftover temp files are visible."""
    import tempfile

    path = tmp_path_factory.mktemp("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture(autouse=True)
def no_leftover_children():
    """After each harness test: no rank process of ours still running, no extra threads."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    yield
    # The forkserver and multiprocessing's resource tracker are session-long helpers;
    # anything else started during the test must be gone.
    helpers = set()
    for p in me.children(recursive=False):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "forkserver" in cmd or "resource_tracker" in cmd:
            helpers.add(p.pid)
    leftovers = []
    for p in me.children(recursive=True):
        if p.pid in before or p.pid in helpers:
            continue
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append((p.pid, " ".join(p.cmdline())))
        except psutil.NoSuchProcess:
            continue
    assert not leftovers, f"processes left behind: {leftovers}"
    extra = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and not _other_plugins_helper(t)
    ]
    assert not extra, f"threads left behind: {extra}"


def _other_plugins_helper(thread: threading.Thread) -> bool:
    """pytest-rerunfailures (with xdist installed) starts a status server thread in every
    pytest session, an in-process pytester session included, and never stops it."""
    target = getattr(thread, "_target", None)
    return thread.daemon and getattr(target, "__qualname__", "") == "ServerStatusDB.run_server"

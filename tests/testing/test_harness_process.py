"""The harness against the outside world: Ctrl-C, the debug rank on a terminal, torch tests."""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from _harness_helpers import alive, leftover_files, read_pids

SLEEPERS = """
import os, subprocess, time
from mpdist.testing import MultiProcessTestCase


def note(tag, pid):
    path = os.path.join(os.environ["PID_DIR"], f"{tag}{pid}")
    with open(path + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(path + ".tmp", path)


class TestSleep(MultiProcessTestCase):
    def test_sleep(self):
        child = subprocess.Popen(["sleep", "120"])
        note("grandchild", child.pid)
        note("rank", os.getpid())
        time.sleep(120)


class TestStuckInNewGroup(MultiProcessTestCase):
    def test_new_group(self):
        from mpdist import distributed as dist
        from mpdist.store import FileStore

        dist.init_process_group(
            "tcp", store=FileStore(self.file_name, 2), rank=self.rank, world_size=2
        )
        child = subprocess.Popen(["sleep", "120"])
        note("grandchild", child.pid)
        note("rank", os.getpid())
        if self.rank == 0:
            dist.new_group([0, 1])  # connects its mesh: waits for rank 1, which never comes
        time.sleep(120)
"""


# Plugins the inner pytest does not need; hypothesis alone costs seconds at session end.
QUIET_PLUGINS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")


def _wait_for_files(directory: str, count: int, proc: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while len(os.listdir(directory)) < count:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the ranks never started"
        time.sleep(0.05)  # polling for the ranks to write their pid files


@pytest.mark.parametrize("test", ["TestSleep", "TestStuckInNewGroup"])
def test_ctrl_c_stops_every_rank_and_grandchild(
    pytester: pytest.Pytester, pid_dir: str, tmp_path_factory: pytest.TempPathFactory, test: str
) -> None:
    # TestStuckInNewGroup: rank 0 is inside new_group, building a group that is not yet
    # registered for abort; it must be reaped like any other rank.
    pytester.makepyfile(test_sigint=SLEEPERS)
    tmpdir = tmp_path_factory.mktemp("sigint-tmp")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *QUIET_PLUGINS, f"test_sigint.py::{test}"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    try:
        _wait_for_files(pid_dir, 4, proc)
        pids = read_pids(pid_dir)
        assert len(alive(pids)) == 4
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert not alive(pids)
    assert leftover_files(tmpdir) == []  # the test's store and output files are gone too


DEBUG = """
from mpdist.testing import MultiProcessTestCase


class TestDebug(MultiProcessTestCase):
    def test_debug(self):
        value = 42 + self.rank
        if self.rank == 1:
            breakpoint()
        print(f"rank {self.rank} finished")
"""


def _read_until(fd: int, needle: bytes, seen: bytearray, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"never saw {needle!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"terminal closed before {needle!r}: {bytes(seen)!r}"
            seen += chunk


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty handling is Linux-specific")
def test_debug_rank_runs_attached_to_the_terminal(pytester: pytest.Pytester) -> None:
    import pty

    pytester.makepyfile(test_debug=DEBUG)
    env = dict(os.environ)
    env.pop("PYTHONBREAKPOINT", None)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_debug.py"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: pytest on a terminal of its own
        try:
            os.chdir(pytester.path)
            os.execve(sys.executable, [*argv, "--mp-debug-rank", "1"], env)
        finally:
            os._exit(127)
    seen = bytearray()
    status = None
    try:
        _read_until(fd, b"(Pdb)", seen)
        os.write(fd, b"p value * 10\n")
        _read_until(fd, b"430", seen)
        os.write(fd, b"c\n")
        _read_until(fd, b"passed", seen)
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
    text = bytes(seen).decode(errors="replace")
    # Rank 1 printed straight to the terminal; rank 0's output stayed captured.
    assert "rank 1 finished" in text
    assert "rank 0 finished" not in text


TORCH = """
import sys
import torch
import torch.distributed as tdist
from mpdist.testing import MultiProcessTestCase


class TestTorchWritten(MultiProcessTestCase):
    reuse_processes = True

    def init(self):
        tdist.init_process_group(
            "gloo", store=tdist.FileStore(self.file_name, self.world_size),
            rank=self.rank, world_size=self.world_size,
        )

    def test_1_all_reduce(self):
        self.init()
        t = torch.ones(3) * (self.rank + 1)
        tdist.all_reduce(t)
        assert t.tolist() == [3.0, 3.0, 3.0]
        # The group is left initialized: the harness destroys it after the test.

    def test_2_same_workers_init_again(self):
        self.init()
        t = torch.rand(4)  # torch is seeded identically in every rank
        ref = t.clone()
        tdist.broadcast(ref, src=0)
        assert torch.equal(t, ref)

    def test_3_torch_skip_exit_code(self):
        self.init()
        sys.exit(73)
"""


def test_torch_written_test_runs_under_the_harness(pytester: pytest.Pytester) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("torch.distributed")
    if importlib.util.find_spec("expecttest") is None:
        # torch's test utilities (where TEST_SKIPS lives) import expecttest; a stand-in
        # on the ranks' sys.path is enough for the lookup.
        pytester.makepyfile(
            expecttest=textwrap.dedent(
                """
                import unittest

                class TestCase(unittest.TestCase):
                    pass
                """
            )
        )
    pytester.makepyfile(test_torch_written=TORCH)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*Skipped due to small world size.*"])

"""``python -m mpdist bench harness``: what one trivial 2-rank test costs under pytest.

The test initializes a group and does one all_reduce. It is run end to end by
pytest in a subprocess: with fresh rank processes per test, with worker reuse
(``reuse_processes = True``), and (when torch is installed) with torch's own
MultiProcessTestCase on gloo, side by side. Per-test time is setup + call +
teardown as pytest reports it; the first test of each run (forkserver start,
pool start, imports) is shown apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence

from mpdist.benchmarks import output

_FRESH = """
import numpy as np
from mpdist import distributed as dist
from mpdist.store import FileStore
from mpdist.testing import MultiProcessTestCase


class TestTrivial(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

{methods}
"""

_FRESH_METHOD = """
    def test_{i}(self):
        dist.init_process_group(
            "tcp", store=FileStore(self.file_name, 2), rank=self.rank, world_size=2
        )
        a = np.ones(4)
        dist.all_reduce(a)
        assert a[0] == 2
        dist.destroy_process_group()
"""

_REUSE = """
import numpy as np
from mpdist import distributed as dist
from mpdist.testing import MultiProcessTestCase, with_comms


class TestTrivial(MultiProcessTestCase):
    reuse_processes = True

    @property
    def world_size(self):
        return 2

{methods}
"""

_REUSE_METHOD = """
    @with_comms
    def test_{i}(self):
        a = np.ones(4)
        dist.all_reduce(a)
        assert a[0] == 2
"""

_TORCH = """
import os

import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import MultiProcessTestCase


class TestTrivial(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def tearDown(self):
        # as torch's own test classes do: the store file is the test class's to remove
        # (FileStore removes it only when its last user closes it, which a rank process
        # ended at teardown may not get to)
        super().tearDown()
        try:
            os.remove(self.file_name)
        except OSError:
            pass

{methods}
"""

_TORCH_METHOD = """
    def test_{i}(self):
        dist.init_process_group(
            "gloo", store=dist.FileStore(self.file_name, 2), rank=self.rank, world_size=2
        )
        a = torch.ones(4)
        dist.all_reduce(a)
        assert a[0] == 2
        dist.destroy_process_group()
"""

# A conftest that writes each test's setup + call + teardown time to a JSON file.
_CONFTEST = """
import json, os

_times = {}

def pytest_runtest_logreport(report):
    _times[report.nodeid] = _times.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown":
        with open(os.environ["MPDIST_BENCH_OUT"], "w") as f:
            json.dump(_times, f)
"""


_EXPECTTEST_STANDIN = """
import unittest


class TestCase(unittest.TestCase):
    pass
"""


def _run(name: str, template: str, method: str, n: int, workdir: str) -> dict[str, float] | None:
    path = os.path.join(workdir, name)
    os.makedirs(path, exist_ok=True)
    if name == "torch" and importlib.util.find_spec("expecttest") is None:
        # torch's test utilities import expecttest (a torch dev dependency); a stand-in
        # next to the test file is all its MultiProcessTestCase needs.
        with open(os.path.join(path, "expecttest.py"), "w") as f:
            f.write(_EXPECTTEST_STANDIN)
    methods = "".join(method.format(i=f"{i:03d}") for i in range(n))
    with open(os.path.join(path, f"test_{name}.py"), "w") as f:
        f.write(template.format(methods=textwrap.indent(textwrap.dedent(methods), "    ")))
    with open(os.path.join(path, "conftest.py"), "w") as f:
        f.write(_CONFTEST)
    out = os.path.join(path, "times.json")
    env = dict(os.environ, MPDIST_BENCH_OUT=out)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", path],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(
            f"{name}: pytest failed (exit {proc.returncode})\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
        return None
    with open(out) as f:
        times = [v for _, v in sorted(json.load(f).items())]
    rest = times[1:] or times
    return {
        "n": len(times),
        "first": times[0],
        "median": statistics.median(rest),
        "mean": statistics.fmean(rest),
        "wall": wall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness benchmark and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="mpdist bench harness", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "-n", "--tests", type=int, default=20, help="tests per mpdist run (default 20)"
    )
    parser.add_argument(
        "--torch-tests", type=int, default=3, help="tests in the torch run (default 3)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torch's harness")
    output.add_options(parser)
    args = parser.parse_args(list(argv or []))
    if args.tests < 2:
        parser.error("--tests must be at least 2")
    if (problem := output.check_options(args)) is not None:
        parser.error(problem)
    records: list[dict[str, object]] = []
    runs = [
        ("fresh", "mpdist, fresh processes", _FRESH, _FRESH_METHOD, args.tests),
        ("reuse", "mpdist, worker reuse + with_comms", _REUSE, _REUSE_METHOD, args.tests),
    ]
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        runs.append(
            (
                "torch",
                "torch MultiProcessTestCase (spawn, gloo)",
                _TORCH,
                _TORCH_METHOD,
                args.torch_tests,
            )
        )
    print("trivial 2-rank test (init a group, one all_reduce), end to end under pytest")
    print(f"{'harness':42} {'tests':>5} {'first':>9} {'median':>9} {'mean':>9} {'wall':>8}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-") as workdir:
        for name, label, template, method, n in runs:
            r = _run(name, template, method, n, workdir)
            if r is None:
                failed = True
                continue
            print(
                f"{label:42} {r['n']:>5} {r['first'] * 1e3:>7.1f}ms {r['median'] * 1e3:>7.1f}ms "
                f"{r['mean'] * 1e3:>7.1f}ms {r['wall']:>7.2f}s"
            )
            records.append(
                {
                    "harness": label,
                    "tests": r["n"],
                    "first_s": r["first"],
                    "median_s": r["median"],
                    "mean_s": r["mean"],
                    "wall_s": r["wall"],
                }
            )
    print("per-test = setup + call + teardown; median/mean exclude the first test (start-up)")
    output.write_json(args.json, "harness", records, args)
    return 1 if failed else 0

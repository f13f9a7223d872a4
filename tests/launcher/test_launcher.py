"""Tests of ``python -m mpdist run``: real launcher processes running small scripts from tmp_path."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mpdist.launcher import _reserve_port, main

LAUNCH_TIMEOUT = 60  # only a safety net against a hung launcher; never reached when it works


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Fail if any process whose command line mentions this test's tmp_path is still alive.

    Every script and every grandchild a script starts carries tmp_path in its
    command line, so this finds ranks and descendants whatever their parent.
    """
    yield
    marker = str(tmp_path)
    left = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(marker in c for c in cmd):
                left.append((p.pid, cmd))
        except psutil.Error:
            continue
    for pid, _ in left:  # don't let one failure leak into the next tests
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not left, f"processes left behind: {left}"


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def command(args: list) -> list[str]:
    """The command line of ``mpdist run *args``."""
    return [sys.executable, "-m", "mpdist", "run", *map(str, args)]


def launch(args: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    """Run ``mpdist run *args`` to the end; its output is captured as text."""
    return subprocess.run(
        command(args), cwd=cwd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, **kw
    )


@contextlib.contextmanager
def launched(
    cwd: Path, *arg_lists: list, env: dict[str, str] | None = None
) -> Iterator[list[subprocess.Popen]]:
    """Start ``mpdist run *args`` in the background for each argument list, with text pipes.

    Whatever happens in the block, no launcher is left running after it: one still running
    is killed, and its ranks die with it (PR_SET_PDEATHSIG); no_leftovers checks the rest.
    """
    procs: list[subprocess.Popen] = []
    try:
        for args in arg_lists:
            procs.append(
                subprocess.Popen(
                    command(args),
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def run_nodes(cwd: Path, common: list, program: Path, node_ranks: list[int]) -> dict[int, str]:
    """Run one launcher per node rank (started in that order) with options ``common``;
    once every launcher has exited 0, return each node's stdout by node rank."""
    arg_lists = [[*common, "--node-rank", n, program] for n in node_ranks]
    with launched(cwd, *arg_lists) as nodes:
        results = [p.communicate(timeout=LAUNCH_TIMEOUT) for p in nodes]
    assert [p.returncode for p in nodes] == [0] * len(nodes), results
    return {n: out for n, (out, _) in zip(node_ranks, results, strict=True)}


def by_rank(text: str) -> dict[int, list[str]]:
    """Group ``[rank k] line`` lines by k; any other line fails the test."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        assert line.startswith("[rank "), f"unprefixed line: {line!r}"
        head, _, rest = line.partition("] ")
        out.setdefault(int(head[len("[rank ") :]), []).append(rest)
    return out


# A grandchild that lives until killed; its command line carries tmp_path for no_leftovers.
SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(600)', str(Path(__file__).parent)]"


# ---- environment, arguments, output -----------------------------------------------------------


def test_env_vars_args_and_prefixed_output(tmp_path):
    s = script(
        tmp_path,
        "env.py",
        """
        import json, os, sys
        keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "MASTER_ADDR", "MASTER_PORT", "PYTHONUNBUFFERED"]
        print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:]}))
        print("on stderr", os.environ["RANK"], file=sys.stderr)
        sys.stdout.write("no newline at the end")
        """,
    )
    res = launch(["--nproc", 3, s, "a", "--nproc", "7", "--", "-m"], tmp_path)
    assert res.returncode == 0, res.stderr
    out, err = by_rank(res.stdout), by_rank(res.stderr)
    assert sorted(out) == sorted(err) == [0, 1, 2]
    ports = set()
    for k in range(3):
        first, last = out[k]
        assert last == "no newline at the end"
        record = json.loads(first)
        assert record["argv"] == ["a", "--nproc", "7", "--", "-m"]  # passed on verbatim
        env = record["env"]
        ports.add(env.pop("MASTER_PORT"))
        assert env == {
            "RANK": str(k),
            "WORLD_SIZE": "3",
            "LOCAL_RANK": str(k),
            "LOCAL_WORLD_SIZE": "3",
            "GROUP_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        assert err[k] == [f"on stderr {k}"]
    (port,) = ports  # one port shared by every rank
    assert 1 <= int(port) <= 65535


def test_lines_of_different_ranks_never_mix(tmp_path):
    # Many long lines, each printed as several writes (text, then newline), from 3 ranks at once.
    s = script(
        tmp_path,
        "chatty.py",
        """
        import os, sys
        r = os.environ["RANK"]
        for i in range(200):
            print(f"{r}:{i}:" + r * 3000)
            print(f"{r}:{i}:err", file=sys.stderr)
        """,
    )
    res = launch(["--nproc", 3, s], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    out, err = by_rank(res.stdout), by_rank(res.stderr)
    for k in range(3):
        assert out[k] == [f"{k}:{i}:" + str(k) * 3000 for i in range(200)]
        assert err[k] == [f"{k}:{i}:err" for i in range(200)]


def test_module_mode(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    script(
        tmp_path,
        "pkg/job.py",
        """
        import os, sys
        print(__spec__.name, __name__, os.environ["RANK"], sys.argv[1:])
        """,
    )
    res = launch(["--nproc", 2, "-m", "pkg.job", "x", "-y", str(tmp_path)], tmp_path)
    assert res.returncode == 0, res.stderr
    out = by_rank(res.stdout)
    for k in range(2):
        assert out[k] == [f"pkg.job __main__ {k} ['x', '-y', '{tmp_path}']"]


def test_success_exits_zero_and_reaps_what_ranks_leave_behind(tmp_path):
    # A rank that exits 0 but leaves a grandchild running: the launcher stops it too.
    s = script(
        tmp_path,
        "daemon.py",
        f"""
        import subprocess, sys
        from pathlib import Path
        subprocess.Popen({SLEEPER})
        print("started")
        """,
    )
    res = launch(["--nproc", 2, s], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "stopping processes the ranks left behind" in res.stderr
    # no_leftovers checks the grandchildren are gone.


# ---- failure propagation -----------------------------------------------------------------------

FAIL_SCRIPT = f"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
rank = int(os.environ["RANK"])
world = int(os.environ["WORLD_SIZE"])
here = Path(__file__).parent
if rank == 1:
    # Fail only once every other rank is up and has a grandchild (a condition, not a delay).
    while len(list(here.glob("*.ready"))) < world - 1:
        time.sleep(0.005)
    how = sys.argv[1]
    if how == "exit":
        sys.exit(7)
    os.kill(os.getpid(), getattr(signal, how))
subprocess.Popen({SLEEPER})
(here / f"{{rank}}.tmp").write_text("x")
(here / f"{{rank}}.tmp").rename(here / f"{{rank}}.ready")
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("how", "code", "described"),
    [
        ("exit", 7, "exited with code 7"),
        ("SIGKILL", 128 + signal.SIGKILL, f"was killed by SIGKILL (exit code {128 + 9})"),
    ],
)
def test_first_failing_rank_stops_the_others(tmp_path, how, code, described):
    s = script(tmp_path, "fail.py", FAIL_SCRIPT)
    res = launch(["--nproc", 3, s, how], tmp_path)
    assert res.returncode == code, res.stderr
    assert "mpdist run: rank 1 (pid " in res.stderr
    assert f"{described}; stopping the other ranks" in res.stderr
    assert sorted(p.name for p in tmp_path.glob("*.ready")) == ["0.ready", "2.ready"]
    # The sleeping ranks 0 and 2 and their grandchildren are gone: no_leftovers checks.


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_launcher_stops_everything(tmp_path, sig):
    # Rank 1 and its grandchild ignore SIGTERM, so the launcher must escalate to SIGKILL.
    s = script(
        tmp_path,
        "sleepy.py",
        f"""
        import os, signal, subprocess, sys, time
        from pathlib import Path
        if os.environ["RANK"] == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild
        subprocess.Popen({SLEEPER})
        print("ready", flush=True)
        time.sleep(600)
        """,
    )
    with launched(tmp_path, ["--nproc", 2, "--stop-grace", 0.2, s]) as (proc,):
        assert proc.stdout is not None
        ready = {proc.stdout.readline().strip() for _ in range(2)}
        assert ready == {"[rank 0] ready", "[rank 1] ready"}
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 130, err
    assert f"got {sig.name}; stopping every rank" in err


def test_second_signal_skips_the_grace_period(tmp_path):
    # Both ranks ignore SIGTERM and the grace period is far longer than the test's timeout:
    # only the second Ctrl-C (sent once the launcher says it is stopping) ends the job.
    s = script(
        tmp_path,
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
        """,
    )
    with launched(tmp_path, ["--nproc", 2, "--stop-grace", 600, s]) as (proc,):
        assert proc.stdout is not None and proc.stderr is not None
        assert {proc.stdout.readline().strip() for _ in range(2)} == {
            "[rank 0] ready",
            "[rank 1] ready",
        }
        proc.send_signal(signal.SIGINT)
        assert proc.stderr.readline().strip() == "mpdist run: got SIGINT; stopping every rank"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 130


# ---- multi-node -------------------------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port nobody else gets while the test runs (bound with SO_REUSEADDR, not listening)."""
    with _reserve_port("127.0.0.1", 0) as sock:  # what the launcher does for rank 0's port
        yield sock.getsockname()[1]


def test_two_nodes_get_global_ranks(tmp_path, held_port):
    s = script(
        tmp_path,
        "where.py",
        """
        import os
        print(*(os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                        "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")))
        """,
    )
    common = ["--nnodes", 2, "--nproc", 2, "--master-addr", "127.0.0.1", "--master-port", held_port]
    for node, out in run_nodes(tmp_path, common, s, [0, 1]).items():
        got = by_rank(out)
        for local in range(2):
            rank = node * 2 + local
            assert got[rank] == [f"{rank} {local} 4 2 {node} 127.0.0.1 {held_port}"]


# ---- bad arguments (in-process: nothing is started) -------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no script given"),
        (["--nproc", "2"], "no script given"),
        (["-m"], "a module name is required after -m"),
        (["--nproc", "0", "x.py"], "--nproc must be >= 1, got 0"),
        (["--nproc", "two", "x.py"], "argument --nproc"),
        (["--nnodes", "0", "x.py"], "--nnodes must be >= 1"),
        (["--nnodes", "2", "--node-rank", "2", "--master-port", "5", "x.py"], "0..1, got 2"),
        (["--nnodes", "2", "--node-rank", "1", "x.py"], "--master-port is required"),
        (["--master-port", "70000", "x.py"], "--master-port must be in 1..65535"),
        (["--stop-grace", "-1", "x.py"], "--stop-grace must be >= 0"),
        (["--bogus", "x.py"], "unrecognized arguments: --bogus"),
        (["missing.py"], "script not found: 'missing.py'"),
        (["--nproc", "2", "--ranks-filter", "0,x", "x.py"], "--ranks-filter takes global ranks"),
        (["--nproc", "2", "--ranks-filter", "2", "x.py"], "rank 2 is not in 0..1"),
    ],
)
def test_bad_arguments(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("raise SystemExit('must not run')\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: mpdist run" in err
    assert message in err


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "--nproc" in capsys.readouterr().out


def test_master_port_in_use_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("raise SystemExit('must not run')\n")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["--nproc", "2", "--master-port", str(port), "x.py"]) == 2
    err = capsys.readouterr().err
    assert f"cannot use 127.0.0.1:{port} for rank 0's store" in err


# ---- env:// through the launcher ---------------------------------------------------------------


def test_env_rendezvous_store_under_launcher(tmp_path):
    s = script(
        tmp_path,
        "meet.py",
        """
        from datetime import timedelta
        from mpdist.store.rendezvous import rendezvous
        store, rank, n = rendezvous(None, -1, -1, timedelta(seconds=30))
        store.set(f"k{rank}", str(rank * 10))
        print(rank, n, sorted(int(store.get(f"k{r}")) for r in range(n)))
        store.set(f"done{rank}", "")
        if rank == 0:  # rank 0 serves the store: it must stay until everyone is done with it
            store.wait([f"done{r}" for r in range(n)])
        store.close()
        """,
    )
    res = launch(["--nproc", 3, s], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = by_rank(res.stdout)
    assert {k: v for k, v in out.items()} == {k: [f"{k} 3 [0, 10, 20]"] for k in range(3)}


ALLREDUCE_SCRIPT = """
import numpy as np
import mpdist as dist
dist.init_process_group()
a = np.full(5, dist.get_rank() + 1, dtype=np.float64)
dist.all_reduce(a)
print(dist.get_rank(), dist.get_world_size(), a.tolist())
dist.destroy_process_group()
"""


def test_init_process_group_and_all_reduce_under_launcher(tmp_path):
    s = script(tmp_path, "allreduce.py", ALLREDUCE_SCRIPT)
    res = launch(["--nproc", 2, s], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert by_rank(res.stdout) == {k: [f"{k} 2 [3.0, 3.0, 3.0, 3.0, 3.0]"] for k in range(2)}


def test_two_launchers_form_one_world(tmp_path, held_port):
    # Two "nodes" on this machine, 2 ranks each: one env:// rendezvous, one all_reduce.
    s = script(tmp_path, "allreduce.py", ALLREDUCE_SCRIPT)
    common = ["--nnodes", 2, "--nproc", 2, "--master-port", held_port]
    # The non-master node first: its ranks wait for rank 0's store.
    outputs = run_nodes(tmp_path, common, s, [1, 0])
    got = {**by_rank(outputs[0]), **by_rank(outputs[1])}
    assert got == {k: [f"{k} 4 [10.0, 10.0, 10.0, 10.0, 10.0]"] for k in range(4)}


# ---- --log-dir, --ranks-filter, --timestamp, threads, Slurm defaults ---------------------------

TALKER = """
import os, sys
rank = os.environ["RANK"]
print(f"out {rank}")
print(f"err {rank}", file=sys.stderr)
print(*(os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")))
"""


def test_log_dir_keeps_every_ranks_output_and_ranks_filter_the_terminal(tmp_path):
    s = script(tmp_path, "talk.py", TALKER)
    logs = tmp_path / "logs" / "deep"
    res = launch(["--nproc", 3, "--log-dir", logs, "--ranks-filter", "0,2", s], tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(by_rank(res.stdout)) == [0, 2]
    assert sorted(by_rank(res.stderr)) == [0, 2]
    for rank in range(3):  # the files hold every rank, filtered or not, unprefixed
        out = (logs / f"rank{rank}.stdout").read_text().splitlines()
        assert out[0] == f"out {rank}"
        assert (logs / f"rank{rank}.stderr").read_text() == f"err {rank}\n"


def test_timestamp_starts_every_line(tmp_path):
    s = script(tmp_path, "talk.py", TALKER)
    res = launch(["--nproc", 2, "--timestamp", "--log-dir", tmp_path / "l", s], tmp_path)
    assert res.returncode == 0, res.stderr
    stamp = r"\d\d:\d\d:\d\d\.\d{3} "
    lines = res.stdout.splitlines() + res.stderr.splitlines()
    assert len(lines) == 6
    assert all(re.fullmatch(stamp + r"\[rank [01]\] .*", line) for line in lines), lines
    assert re.fullmatch(stamp + "err 1\n", (tmp_path / "l" / "rank1.stderr").read_text())


def test_thread_pools_sized_to_the_ranks_unless_set(tmp_path, monkeypatch):
    from mpdist.testing._config import blas_threads

    s = script(tmp_path, "talk.py", TALKER)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    want = str(blas_threads(2))
    res = launch(["--nproc", 2, s], tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert [lines[1] for lines in by_rank(res.stdout).values()] == [f"{want} {want} {want}"] * 2
    res = launch(["--nproc", 2, s], tmp_path, env={**env, "OMP_NUM_THREADS": "7"})
    assert [lines[1] for lines in by_rank(res.stdout).values()] == [f"7 {want} {want}"] * 2


def test_slurm_gives_nnodes_node_rank_and_master(tmp_path):
    """Two launchers, one per Slurm "node", with no node or master options at all."""
    from mpdist.store.rendezvous import derived_port

    job = next(j for j in range(5000, 6000) if _port_free(derived_port(f"slurm:{j}.0")))
    s = script(
        tmp_path,
        "where.py",
        """
        import os, numpy as np, mpdist
        mpdist.init_process_group("tcp")
        x = np.array([mpdist.get_rank() + 1.0])
        mpdist.all_reduce(x)
        print(os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"],
              os.environ["MASTER_PORT"], x[0])
        mpdist.destroy_process_group()
        """,
    )
    slurm = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "SLURM_JOB_ID": str(job),
        "SLURM_STEP_ID": "0",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "localhost,node[2]",  # node 0 first: not the default 127.0.0.1
        "MPDIST_JOB_SECRET": "s" * 32,  # a multi-node job shares one secret
    }
    envs = [{**slurm, "SLURM_NODEID": str(n)} for n in (0, 1)]
    procs = []
    try:
        for env in envs:
            procs.append(
                subprocess.Popen(
                    command(["--nproc", 1, s]),
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = [p.communicate(timeout=LAUNCH_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], results
    port = derived_port(f"slurm:{job}.0")
    for node, (out, _) in enumerate(results):
        assert by_rank(out) == {node: [f"{node} 2 localhost {port} 3.0"]}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- --no-aslr ----------------------------------------------------------------------------------

LAYOUT = """
    import os
    with open("/proc/self/personality") as f:
        persona = int(f.read(), 16)
    # ADDR_NO_RANDOMIZE, and where the interpreter's own data lies (a builtin function object)
    print(os.environ["RANK"], bool(persona & 0x0040000), id(len))
"""


def _layouts(stdout: str) -> dict[int, tuple[bool, int]]:
    rows = [line.split()[-3:] for lines in by_rank(stdout).values() for line in lines]
    return {int(rank): (flag == "True", int(where)) for rank, flag, where in rows}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="personality(2): Linux")
def test_no_aslr_starts_every_rank_at_the_same_addresses(tmp_path):
    prog = script(tmp_path, "layout.py", LAYOUT)
    res = launch(["--nproc", "3", "--no-aslr", prog], tmp_path)
    if res.returncode == 2 and "refuses" in res.stderr:
        pytest.skip(f"this system forbids it: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    seen = _layouts(res.stdout)
    assert sorted(seen) == [0, 1, 2]
    assert all(flag for flag, _ in seen.values())
    assert len({where for _, where in seen.values()}) == 1

    res = launch(["--nproc", "2", prog], tmp_path)  # without it, randomization stays on
    assert res.returncode == 0, res.stderr
    assert not any(flag for flag, _ in _layouts(res.stdout).values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="personality(2): Linux")
def test_no_aslr_leaves_the_launchers_own_persona_as_it_was(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    prog = script(tmp_path, "layout.py", LAYOUT)

    def persona() -> str:
        with open("/proc/self/personality") as f:
            return f.read()

    before = persona()
    code = main(["--nproc", "1", "--no-aslr", str(prog)])
    assert persona() == before
    if code == 2:
        assert "refuses" in capfd.readouterr().err
    else:
        assert code == 0


def test_no_aslr_refused_is_a_clear_error_before_any_rank_starts(tmp_path, monkeypatch, capsys):
    import mpdist._rank_start as rank_start

    def refusing(name: str):
        def personality(persona: int) -> int:
            if persona == 0xFFFFFFFF:
                return 0
            ctypes.set_errno(1)  # EPERM, as a seccomp profile answers
            return -1

        return personality if name == "personality" else None

    monkeypatch.setattr(rank_start, "libc_function", refusing)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("raise SystemExit('must not run')\n")
    assert main(["--nproc", "2", "--no-aslr", "x.py"]) == 2
    err = capsys.readouterr().err
    assert "--no-aslr" in err and "refuses to turn address randomization off" in err
    assert "Operation not permitted" in err
    assert "must not run" not in err

"""env:// under each launcher: its variables read (rank, world size, local rank and size), the
master found (Slurm's node list, a port from the job id, loopback on one host), torchrun and
real ``mpiexec`` / ``torchrun`` jobs. The ranks are real subprocesses with only that launcher's
variables in their environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mpdist.store import rendezvous as rdv
from mpdist.store.rendezvous import (
    LaunchInfo,
    _env_params,
    derived_port,
    expand_hostlist,
    launch_info,
)

JOB = Path(__file__).with_name("_env_job.py")
JOB_TIMEOUT = 60  # a safety net against a hang; never reached when it works
# Variables any launcher sets: dropped from the test's own environment before a job starts.
_LAUNCHER_PREFIXES = (
    "SLURM_",
    "OMPI_",
    "PMI_",
    "PMIX_",
    "MPI_LOCAL",
    "MV2_",
    "MPIRUN_",
    "TORCHELASTIC_",
    "MASTER_",
)
_TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_LAUNCHER_PREFIXES) and k not in _TORCH_VARS
    }


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_id_with_free_port(prefix: str, suffix: str = "") -> str:
    """A job id whose derived port is free now (the test's jobs must not meet a stranger)."""
    for i in range(1000):
        if _free(derived_port(f"{prefix}{10_000 + i}{suffix}")):
            return str(10_000 + i)
    raise AssertionError("no free derived port")


def _run_ranks(envs: list[dict[str, str]], init_method: str = "env://") -> list[dict]:
    """Start one subprocess per environment; every one must exit 0; their JSON lines."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(JOB), init_method],
            env={**_clean_env(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=JOB_TIMEOUT)
            assert p.returncode == 0, f"rank exited {p.returncode}:\n{out}\n{err}"
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return sorted(outs, key=lambda r: r["rank"])


def _json_records(out: str) -> list[dict]:
    """The ranks' JSON records in a launcher's merged output (mpiexec may join lines)."""
    return sorted((json.loads(m) for m in re.findall(r"\{[^{}]*\}", out)), key=lambda r: r["rank"])


def _expect_world(results: list[dict], n: int, launcher: str) -> None:
    assert [r["rank"] for r in results] == list(range(n))
    assert {r["world_size"] for r in results} == {n}
    assert {r["sum"] for r in results} == {n * (n + 1) / 2}
    assert {r["launcher"] for r in results} == {launcher}
    assert [r["local_rank"] for r in results] == list(range(n))


# ---- the variables, read ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
            LaunchInfo(3, 8, 1, 2, "torch"),
        ),
        (
            {
                "SLURM_PROCID": "5",
                "SLURM_NTASKS": "8",
                "SLURM_LOCALID": "1",
                "SLURM_NTASKS_PER_NODE": "4",
            },
            LaunchInfo(5, 8, 1, 4, "Slurm"),
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "2",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            },
            LaunchInfo(2, 4, 0, 2, "Open MPI"),
        ),
        (
            {"PMI_RANK": "1", "PMI_SIZE": "6", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "3"},
            LaunchInfo(1, 6, 1, 3, "MPICH/Intel MPI (Hydra)"),
        ),
        (
            {
                "MV2_COMM_WORLD_RANK": "7",
                "MV2_COMM_WORLD_SIZE": "9",
                "MV2_COMM_WORLD_LOCAL_RANK": "2",
                "MV2_COMM_WORLD_LOCAL_SIZE": "3",
            },
            LaunchInfo(7, 9, 2, 3, "MVAPICH"),
        ),
        # PMIx names no world size: another launcher's (Open MPI 5 sets both) fills it in.
        ({"PMIX_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, LaunchInfo(1, 2, None, None, "PMIx")),
        ({}, LaunchInfo(None, None, None, None, None)),
    ],
)
def test_each_launchers_variables(env, expected):
    assert launch_info(env) == expected


def test_launcher_precedence():
    every = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "3",
        "PMI_RANK": "3",
        "PMI_SIZE": "4",
        "MV2_COMM_WORLD_RANK": "4",
        "MV2_COMM_WORLD_SIZE": "5",
        "PMIX_RANK": "5",
    }
    order = ["RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"]
    for i, name in enumerate(order):
        assert launch_info(every)[:2] == (i, i + 1), name
        del every[name]
    assert launch_info(every).launcher == "PMIx"


def test_a_malformed_variable_is_named():
    with pytest.raises(ValueError, match="PMI_SIZE must be an integer, got 'two'"):
        launch_info({"PMI_RANK": "0", "PMI_SIZE": "two"})


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("n1", ["n1"]),
        ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
        ("gpu[1-2]-x[5,7]", ["gpu1-x5", "gpu1-x7", "gpu2-x5", "gpu2-x7"]),
        ("r[8-11]", ["r8", "r9", "r10", "r11"]),
        ("r[008-010]", ["r008", "r009", "r010"]),
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["", "n[1-", "n]", "n[a]", "n[3-1]", "a,,b", "n[1-2"])
def test_expand_hostlist_refuses_malformed(bad):
    with pytest.raises(ValueError, match="malformed Slurm node list"):
        expand_hostlist(bad)


def test_derived_port_is_stable_and_below_the_ephemeral_range():
    ports = {derived_port(f"slurm:{i}.0") for i in range(2000)}
    assert all(15000 <= p < 30000 for p in ports)
    assert len(ports) > 1800  # spread out: different jobs rarely collide
    assert derived_port("slurm:42.0") == derived_port("slurm:42.0")


def test_slurm_master_from_node_list_and_port_from_job_id():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node[07-08]",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
    }
    addr, port, rank, size = _env_params({}, -1, -1, env)
    assert (addr, rank, size) == ("node07", 5, 8)
    assert port == derived_port("slurm:4242.0")
    # A step runs on the step's nodes; the next step of the job gets another port.
    env.update(SLURM_STEP_NODELIST="node08", SLURM_STEP_ID="1")
    addr, port2, _, _ = _env_params({}, -1, -1, env)
    assert addr == "node08" and port2 != port
    # The user's own MASTER_ADDR / MASTER_PORT win.
    env.update(MASTER_ADDR="10.1.1.1", MASTER_PORT="29400")
    assert _env_params({}, -1, -1, env)[:2] == ("10.1.1.1", 29400)


def test_mpi_on_several_hosts_without_master_addr_says_what_to_do():
    env = {"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "2", "MASTER_PORT": "1234"}
    with pytest.raises(ValueError, match=r"MASTER_ADDR expected.*Hydra.*mpdist\[mpi\]"):
        _env_params({}, -1, -1, env)


def test_mpi_on_one_host_gets_loopback_and_a_port_from_the_job_id():
    env = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "OMPI_MCA_ess_base_jobid": "777",
    }
    assert _env_params({}, -1, -1, env) == ("127.0.0.1", derived_port("mpi:777"), 1, 2)
    # Hydra names no job id: the parent (its proxy) that this host's ranks share.
    hydra = {"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}
    assert _env_params({}, -1, -1, hydra)[:2] == ("127.0.0.1", derived_port(f"mpi:{os.getppid()}"))


def test_no_master_port_outside_a_launcher_is_still_an_error():
    with pytest.raises(ValueError, match="MASTER_PORT expected, but not set"):
        _env_params({}, -1, -1, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})


def test_default_init_method_under_each_mpi_launcher(monkeypatch):
    """With mpi4py installed, None means mpi:// under an MPI launcher, never under torchrun."""
    monkeypatch.setattr(rdv.importlib.util, "find_spec", lambda name: object())
    for env in (
        {"OMPI_COMM_WORLD_SIZE": "2"},
        {"PMI_SIZE": "2"},
        {"MV2_COMM_WORLD_SIZE": "2"},
        {"PMIX_RANK": "0"},
    ):
        assert rdv._mpi_launched(env), env
        assert not rdv._mpi_launched({**env, "MASTER_ADDR": "h"})
    monkeypatch.setattr(rdv.importlib.util, "find_spec", lambda name: None)
    assert not rdv._mpi_launched({"PMI_SIZE": "2"})


def test_torchrun_on_several_hosts_stops_at_once_naming_mpdist_run():
    env = {
        "RANK": "0",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_RUN_ID": "abc",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    with pytest.raises(ValueError, match=r"torchrun.*use `mpdist run`|torchrun.*`mpdist run`"):
        rdv.rendezvous("env://", environ=env)


# ---- real ranks, each launcher's variables in their environment ------------------------------


def test_slurm_ranks_meet_through_the_node_list_and_job_id():
    job = _job_id_with_free_port("slurm:", ".0")
    common = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",  # two "nodes": the address must come from the node list
        "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
        "SLURM_JOB_ID": job,
        "SLURM_STEP_ID": "0",
    }
    envs = [{**common, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in range(2)]
    results = _run_ranks(envs)
    _expect_world(results, 2, "Slurm")


def _mpi_envs(kind: str, n: int) -> list[dict[str, str]]:
    if kind == "Open MPI":
        job = _job_id_with_free_port("mpi:")
        return [
            {
                "OMPI_COMM_WORLD_RANK": str(r),
                "OMPI_COMM_WORLD_SIZE": str(n),
                "OMPI_COMM_WORLD_LOCAL_RANK": str(r),
                "OMPI_COMM_WORLD_LOCAL_SIZE": str(n),
                "OMPI_MCA_ess_base_jobid": job,
            }
            for r in range(n)
        ]
    if kind == "MVAPICH":
        job = _job_id_with_free_port("mpi:")
        return [
            {
                "MV2_COMM_WORLD_RANK": str(r),
                "MV2_COMM_WORLD_SIZE": str(n),
                "MV2_COMM_WORLD_LOCAL_RANK": str(r),
                "MV2_COMM_WORLD_LOCAL_SIZE": str(n),
                "MPIRUN_ID": job,
            }
            for r in range(n)
        ]
    # Hydra: no job id; the ranks share their parent (here the test process).
    return [
        {
            "PMI_RANK": str(r),
            "PMI_SIZE": str(n),
            "MPI_LOCALRANKID": str(r),
            "MPI_LOCALNRANKS": str(n),
        }
        for r in range(n)
    ]


@pytest.mark.parametrize("kind", ["Open MPI", "MPICH/Intel MPI (Hydra)", "MVAPICH"])
def test_mpi_launcher_ranks_meet_on_one_host_without_master_variables(kind):
    if kind.startswith("MPICH") and not _free(derived_port(f"mpi:{os.getpid()}")):
        pytest.skip("the derived port of this process is busy")  # pragma: no cover
    results = _run_ranks(_mpi_envs(kind, 3))
    _expect_world(results, 3, kind)
    assert {r["local_world_size"] for r in results} == {3}


def test_pmix_rank_with_master_variables():
    port = _free_port()
    envs = [
        {
            "PMIX_RANK": str(r),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        for r in range(2)
    ]
    results = _run_ranks(envs)
    assert [(r["rank"], r["world_size"], r["sum"], r["launcher"]) for r in results] == [
        (0, 2, 3.0, "PMIx"),
        (1, 2, 3.0, "PMIx"),
    ]


# ---- real launchers ---------------------------------------------------------------------------


def _mpiexec() -> str:
    pytest.importorskip("mpi4py")
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpiexec is not installed (pip install 'mpdist[mpi]')")
    return found


@pytest.mark.parametrize("init_method", ["default", "env://"])
def test_real_mpiexec_job(init_method):
    """mpiexec -n 2: the default meets through mpi:// (mpi4py), env:// through Hydra's variables."""
    mpiexec = _mpiexec()
    proc = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, str(JOB), init_method],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _json_records(proc.stdout)
    assert [(r["rank"], r["world_size"], r["sum"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)]
    assert [r["local_rank"] for r in results] == [0, 1]


def test_real_torchrun_job(tmp_path):
    """torchrun --nproc-per-node 2: its agent holds MASTER_PORT; the ranks meet in a FileStore."""
    pytest.importorskip("torch")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            str(JOB),
        ],
        # torchrun's agent makes a log directory under $TMPDIR (/tmp/torchelastic_*) and
        # leaves it: give it the test's own
        env={**_clean_env(), "TMPDIR": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT * 2,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "already in use" not in out
    results = _json_records(proc.stdout)
    assert [(r["rank"], r["world_size"], r["sum"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)]
    assert {r["launcher"] for r in results} == {"torch"}

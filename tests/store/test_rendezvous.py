"""Tests of ``mpdist.store.rendezvous``: env:// resolution and its fallbacks, file:// and tcp://, errors."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpdist.store as stores
from mpdist.launcher import _reserve_port
from mpdist.store.rendezvous import _env_params, rendezvous

T = timedelta(seconds=30)
BASE_ENV = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _params(env: dict[str, str], rank: int = -1, world_size: int = -1, query=None):
    return _env_params(query or {}, rank, world_size, env)


# ---- env:// resolution (no sockets) ---------------------------------------------------------


def test_env_torch_variables():
    env = {**BASE_ENV, "RANK": "2", "WORLD_SIZE": "4"}
    assert _params(env) == ("127.0.0.1", 29500, 2, 4)


def test_env_explicit_arguments_override_environment():
    env = {**BASE_ENV, "RANK": "2", "WORLD_SIZE": "4"}
    assert _params(env, rank=1, world_size=3) == ("127.0.0.1", 29500, 1, 3)
    # Arguments stand in for missing variables too.
    assert _params(BASE_ENV, rank=0, world_size=2) == ("127.0.0.1", 29500, 0, 2)


def test_env_slurm_fallback():
    env = {**BASE_ENV, "SLURM_PROCID": "3", "SLURM_NTASKS": "8"}
    assert _params(env)[2:] == (3, 8)


def test_env_openmpi_fallback():
    env = {**BASE_ENV, "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}
    assert _params(env)[2:] == (1, 2)


def test_env_precedence_rank_then_slurm_then_ompi():
    env = {
        **BASE_ENV,
        "RANK": "0",
        "WORLD_SIZE": "2",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "6",
        "OMPI_COMM_WORLD_RANK": "7",
        "OMPI_COMM_WORLD_SIZE": "9",
    }
    assert _params(env)[2:] == (0, 2)
    del env["RANK"], env["WORLD_SIZE"]
    assert _params(env)[2:] == (5, 6)
    del env["SLURM_PROCID"], env["SLURM_NTASKS"]
    assert _params(env)[2:] == (7, 9)


@given(
    world_size=st.integers(1, 10_000),
    data=st.data(),
    source=st.sampled_from(
        [
            ("RANK", "WORLD_SIZE"),
            ("SLURM_PROCID", "SLURM_NTASKS"),
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ]
    ),
)
def test_env_any_valid_pair_resolves(world_size, data, source):
    rank = data.draw(st.integers(0, world_size - 1))
    env = {**BASE_ENV, source[0]: f" {rank} ", source[1]: str(world_size)}
    assert _params(env)[2:] == (rank, world_size)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOCAL_WORLD_SIZE": "2"}, "127.0.0.1"),  # what `mpdist run` on one node sets
        ({"SLURM_NNODES": "1"}, None),  # Slurm says one node, but RANK came from torch vars
    ],
)
def test_env_master_addr_default_needs_proof_of_one_host(env, expected):
    env = {"MASTER_PORT": "1234", "RANK": "0", "WORLD_SIZE": "2", **env}
    if expected is None:
        with pytest.raises(ValueError, match="MASTER_ADDR expected, but not set"):
            _params(env)
    else:
        assert _params(env)[0] == expected


def test_env_master_addr_defaults_for_single_node_slurm_and_mpi():
    slurm = {"MASTER_PORT": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "1"}
    assert _params(slurm)[0] == "127.0.0.1"
    mpi = {
        "MASTER_PORT": "1",
        "OMPI_COMM_WORLD_RANK": "0",
        "OMPI_COMM_WORLD_SIZE": "3",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "3",
    }
    assert _params(mpi)[0] == "127.0.0.1"
    # World size 1 needs no address either.
    assert _params({"MASTER_PORT": "1", "RANK": "0", "WORLD_SIZE": "1"})[0] == "127.0.0.1"


def test_env_master_addr_required_when_ranks_may_span_hosts():
    for env in (
        {"MASTER_PORT": "1", "RANK": "0", "WORLD_SIZE": "2"},
        {"MASTER_PORT": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "2"},
        {
            "MASTER_PORT": "1",
            "OMPI_COMM_WORLD_RANK": "0",
            "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        },
    ):
        with pytest.raises(ValueError, match="environment variable MASTER_ADDR expected"):
            _params(env)


# ---- env:// errors, through the public function (raised before any socket is opened) ---------

PREFIX = "Error initializing mpdist.distributed using env:// rendezvous: "


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "environment variable RANK expected, but not set"),
        ({"RANK": "0"}, "environment variable WORLD_SIZE expected, but not set"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "MASTER_PORT expected, but not set"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "environment variable RANK must be an integer, got 'x'"),
        ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer, got 'two'"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is out of range for WORLD_SIZE=2"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 is out of range"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE must be a positive integer, got 0"),
        ({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"}, "SLURM_PROCID=4 is out of range"),
        ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "?"}, "OMPI_COMM_WORLD_SIZE must"),
    ],
)
def test_env_bad_or_missing_variables(env, message):
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **env}
    if "MASTER_PORT expected" in message:
        del env["MASTER_PORT"]
    with pytest.raises(ValueError) as info:
        rendezvous("env://", -1, -1, T, environ=env)
    assert str(info.value).startswith(PREFIX)
    assert message in str(info.value)


def test_env_missing_rank_has_torchs_wording():
    with pytest.raises(ValueError) as info:
        rendezvous(None, -1, -1, T, environ={})
    assert str(info.value) == PREFIX + "environment variable RANK expected, but not set"


@pytest.mark.parametrize("port", ["0", "65536", "-5", "http"])
def test_env_bad_master_port(port):
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": port}
    with pytest.raises(ValueError, match="MASTER_PORT"):
        rendezvous("env://", -1, -1, T, environ=env)


def test_env_explicit_rank_out_of_range():
    with pytest.raises(ValueError, match=r"rank=3 is out of range for WORLD_SIZE=2"):
        rendezvous(None, 3, -1, T, environ={**BASE_ENV, "WORLD_SIZE": "2"})


# ---- argument types and URL errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((b"env://", -1, -1, T), TypeError, "init_method must be a str"),
        (("env://", "0", -1, T), TypeError, "rank must be an int"),
        (("env://", 0, True, T), TypeError, "world_size must be an int"),
        (("env://", 0, 1, 30), TypeError, "timeout must be a datetime.timedelta"),
        (("redis://h:1", 0, 1, T), ValueError, r"No rendezvous handler for redis://"),
        (("127.0.0.1:80", 0, 1, T), ValueError, "is not a URL"),
        (("tcp://127.0.0.1:1234?world_size=2", -1, -1, T), ValueError, "rank parameter missing"),
        (("tcp://127.0.0.1:1234?rank=0", -1, -1, T), ValueError, "world_size parameter missing"),
        (("tcp://127.0.0.1?rank=0&world_size=1", -1, -1, T), ValueError, "port missing"),
        (("tcp://:99?rank=0&world_size=1", -1, -1, T), ValueError, "host missing"),
        (("tcp://h:99999?rank=0&world_size=1", -1, -1, T), ValueError, "port"),
        (
            ("tcp://h:1?rank=0&world_size=1&x=2", -1, -1, T),
            ValueError,
            "unknown query parameter 'x'",
        ),
        (("tcp://h:1?rank=0&rank=1&world_size=2", -1, -1, T), ValueError, "rank given 2 times"),
        (("tcp://h:1?rank=a&world_size=2", -1, -1, T), ValueError, "rank must be an integer"),
        (("tcp://h:1?rank=1&world_size=2", 0, -1, T), ValueError, "rank=0 was passed but the URL"),
        (("tcp://h:1?rank=2&world_size=2", -1, -1, T), ValueError, "rank=2 is out of range"),
        (("file:///tmp/x?world_size=2", -1, -1, T), ValueError, "rank parameter missing"),
        (("file://tmp/x?rank=0&world_size=1", -1, -1, T), ValueError, "absolute path"),
        (("file://?rank=0&world_size=1", -1, -1, T), ValueError, "path missing"),
    ],
)
def test_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        rendezvous(*args, environ={})


def test_tcp_errors_name_the_scheme():
    with pytest.raises(ValueError) as info:
        rendezvous("tcp://127.0.0.1:5?rank=0", -1, -1, T)
    assert str(info.value).startswith(
        "Error initializing mpdist.distributed using tcp:// rendezvous"
    )


# ---- real rendezvous: every rank in its own thread ---------------------------------------------


@pytest.fixture
def reserved_port() -> Iterator[int]:
    """A port held (bound, not listening, SO_REUSEADDR) so nobody else takes it, as `mpdist run` does."""
    with _reserve_port("127.0.0.1", 0) as sock:
        yield sock.getsockname()[1]


@contextlib.contextmanager
def _met(calls: list[tuple]) -> Iterator[list[tuple[stores.Store, int, int]]]:
    """Run ``rendezvous(*args, **kwargs)`` for every ``(args, kwargs)`` in ``calls`` at once,
    one thread each; yield the results, and close every store afterwards."""
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            args, kwargs = calls[i]
            results[i] = rendezvous(*args, **kwargs)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield results
    finally:
        for r in results:
            if r is not None:
                r[0].close()


def _exchange(results: list[tuple[stores.Store, int, int]]) -> None:
    """Each rank writes its key, then every rank reads every key through its own store."""
    n = len(results)
    for store, rank, _ in results:
        store.set(f"hello/{rank}", f"from {rank}")
    for store, _, _ in results:
        assert [store.get(f"hello/{r}") for r in range(n)] == [
            f"from {r}".encode() for r in range(n)
        ]


def test_env_rendezvous_with_slurm_variables(reserved_port, no_leaks):
    calls = []
    for rank in range(3):
        env = {
            "SLURM_PROCID": str(rank),
            "SLURM_NTASKS": "3",
            "SLURM_NNODES": "1",  # one node: MASTER_ADDR defaults to loopback
            "MASTER_PORT": str(reserved_port),
        }
        calls.append(((None, -1, -1, T), {"environ": env}))
    with _met(calls) as results:
        assert [(r, n) for _, r, n in results] == [(0, 3), (1, 3), (2, 3)]
        assert all(isinstance(s, stores.TCPStore) for s, _, _ in results)
        _exchange(results)


def test_env_rendezvous_with_openmpi_variables(reserved_port, no_leaks):
    calls = []
    for rank in range(2):
        env = {
            "OMPI_COMM_WORLD_RANK": str(rank),
            "OMPI_COMM_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(reserved_port),
        }
        calls.append((("env://", -1, -1, T), {"environ": env}))
    with _met(calls) as results:
        assert [(r, n) for _, r, n in results] == [(0, 2), (1, 2)]
        _exchange(results)


def test_tcp_rendezvous(reserved_port, no_leaks):
    url = f"tcp://127.0.0.1:{reserved_port}"
    # Rank 1 passes its rank as an argument instead of in the URL.
    calls = [
        ((f"{url}?rank=0&world_size=2", -1, -1, T), {}),
        ((f"{url}?world_size=2", 1, -1, T), {}),
    ]
    with _met(calls) as results:
        assert [(r, n) for _, r, n in results] == [(0, 2), (1, 2)]
        assert results[0][0].timeout == T
        _exchange(results)


def test_file_rendezvous(tmp_path, no_leaks):
    path = tmp_path / "rdzv store"  # a space, percent-encoded in the URL
    url = "file://" + str(path).replace(" ", "%20")
    calls = [((f"{url}?rank={r}&world_size=2", -1, -1, T), {}) for r in range(2)]
    with _met(calls) as results:
        assert [(r, n) for _, r, n in results] == [(0, 2), (1, 2)]
        assert all(isinstance(s, stores.FileStore) for s, _, _ in results)
        assert results[1][0].timeout == T
        assert path.exists()
        _exchange(results)
    # world_size=2 closers: the last one removes the file.
    assert not path.exists()

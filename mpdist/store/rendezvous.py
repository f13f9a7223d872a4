"""Turn an ``init_method`` URL (``env://``, ``file://``, ``tcp://``) into a store, a rank and a world size.

``init_process_group`` calls :func:`rendezvous` when it is not handed a store.

``env://`` (also what ``None`` means) reads the environment:

* rank: ``RANK``, else ``SLURM_PROCID`` (a task started by ``srun``), else
  ``OMPI_COMM_WORLD_RANK`` (a process started by Open MPI's ``mpirun``);
* world size: ``WORLD_SIZE``, else ``SLURM_NTASKS``, else ``OMPI_COMM_WORLD_SIZE``;
* ``MASTER_PORT``: always required (1..65535);
* ``MASTER_ADDR``: required, except when the environment shows that every rank
  runs on this host (world size 1; ``LOCAL_WORLD_SIZE`` equal to the world size;
  a Slurm job on one node, ``SLURM_NNODES=1``; Open MPI's
  ``OMPI_COMM_WORLD_LOCAL_SIZE`` equal to its world size): then ``127.0.0.1``.
  A silent loopback default in a multi-node job would make every node meet only
  itself and hang until the timeout, so there it is an error instead.

An explicit ``rank`` / ``world_size`` argument (``>= 0``) overrides the
environment. ``tcp://host:port?rank=R&world_size=N`` is the same without the
environment. For both, rank 0 runs the ``TCPStore`` server (``is_master=True``)
and, since the world size is known, waits until every rank has joined, so a
missing rank is reported as "k/n clients joined" rather than as a later hang.

``file:///path?rank=R&world_size=N`` opens ``FileStore(path, N)``.

``mpi://`` (needs mpi4py) lets MPI agree on the rest: rank and world size are
``MPI.COMM_WORLD``'s (a given ``rank``/``world_size`` must match), rank 0 starts the
``TCPStore`` server on a port the OS picks (loopback when every rank runs on its host,
else its host's address) and broadcasts where it is; the others connect. It is what
``None`` means for a process started by an MPI launcher (Open MPI's
``OMPI_COMM_WORLD_SIZE``, PMIx's ``PMIX_RANK``, MPICH/Hydra's and Slurm's PMI
``PMI_SIZE``) when neither ``MASTER_ADDR`` nor ``RANK`` is set and mpi4py is installed.
Without a job secret in the environment, rank 0 makes one and broadcasts it with the
address, so the store authenticates its clients there too.

The store authenticates with the job secret (``MPDIST_JOB_SECRET`` or
``MPDIST_JOB_SECRET_FILE``, read from ``environ`` for ``env://``), when there is one.

Missing or malformed values raise ``ValueError`` naming the variable or query
parameter, before any socket or file is opened.

A rendezvous still waiting for the others (a rank retrying to reach its master, the
master waiting for its clients) holds no process group yet, so aborting groups cannot
reach it: :func:`abort_pending` (from any thread) makes it raise ``DistStoreError``
naming the master's address and the reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Mapping
from datetime import timedelta
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from mpdist import _auth
from mpdist.store.base import Store
from mpdist.store.file import FileStore
from mpdist.store.tcp import TCPStore, abort_pending

__all__ = ["abort_pending", "rendezvous"]

# (rank variable, world size variable), by precedence.
_ENV_SOURCES = (
    ("RANK", "WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)

# Query parameters torch accepts that mean nothing here; ignored so ported URLs keep working.
_IGNORED_QUERY = frozenset({"use_libuv"})
_KNOWN_QUERY = frozenset({"rank", "world_size"}) | _IGNORED_QUERY


def _error(scheme: str, what: str) -> ValueError:
    return ValueError(f"Error initializing mpdist.distributed using {scheme}:// rendezvous: {what}")


def _parse_int(scheme: str, name: str, text: str, kind: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _error(scheme, f"{kind} {name} must be an integer, got {text!r}") from None


def _parse_query(scheme: str, query: str) -> dict[str, int]:
    parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    out: dict[str, int] = {}
    for key, values in parsed.items():
        if key not in _KNOWN_QUERY:
            raise _error(scheme, f"unknown query parameter {key!r} (expected rank, world_size)")
        if len(values) != 1:
            raise _error(scheme, f"query parameter {key} given {len(values)} times")
        if key in _IGNORED_QUERY:
            continue
        out[key] = _parse_int(scheme, key, values[0], "query parameter")
    return out


def _merge(scheme: str, name: str, arg: int, query: Mapping[str, int]) -> int | None:
    """An explicit argument (>= 0) wins; it must agree with the URL if both give one."""
    from_url = query.get(name)
    if arg >= 0:
        if from_url is not None and from_url != arg:
            raise _error(
                scheme, f"{name}={arg} was passed but the URL says {name}={from_url}; give it once"
            )
        return arg
    return from_url


def _check_rank_world(
    scheme: str, rank: int, world_size: int, rank_src: str, size_src: str
) -> None:
    if world_size <= 0:
        raise _error(scheme, f"{size_src} must be a positive integer, got {world_size}")
    if not 0 <= rank < world_size:
        raise _error(
            scheme,
            f"{rank_src}={rank} is out of range for {size_src}={world_size} "
            f"(expected 0 <= rank < {world_size})",
        )


def _check_port(scheme: str, name: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise _error(scheme, f"{name} must be a port number in 1..65535, got {port}")
    return port


def _env_int(env: Mapping[str, str], names: tuple[str, ...], arg: int) -> tuple[int, str] | None:
    """The first of ``names`` set in ``env`` (as an int) and its name; ``arg`` >= 0 wins."""
    if arg >= 0:
        return arg, "argument"
    for name in names:
        text = env.get(name)
        if text is not None and text.strip() != "":
            return _parse_int("env", name, text, "environment variable"), name
    return None


def _all_ranks_local(env: Mapping[str, str], world_size: int, size_src: str) -> bool:
    """Whether the environment proves every rank runs on this host (then loopback is right)."""
    if world_size == 1:
        return True
    if env.get("LOCAL_WORLD_SIZE", "").strip() == str(world_size):
        return True
    if (
        size_src == "SLURM_NTASKS"
        and (env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")) == "1"
    ):
        return True
    return size_src == "OMPI_COMM_WORLD_SIZE" and env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == str(
        world_size
    )


def _env_params(
    query: Mapping[str, int], rank: int, world_size: int, env: Mapping[str, str]
) -> tuple[str, int, int, int]:
    """Resolve env:// to ``(master_addr, master_port, rank, world_size)``; opens nothing."""
    rank_arg = _merge("env", "rank", rank, query)
    size_arg = _merge("env", "world_size", world_size, query)
    found_rank = _env_int(
        env, tuple(r for r, _ in _ENV_SOURCES), -1 if rank_arg is None else rank_arg
    )
    if found_rank is None:
        raise _error("env", "environment variable RANK expected, but not set")
    found_size = _env_int(
        env, tuple(s for _, s in _ENV_SOURCES), -1 if size_arg is None else size_arg
    )
    if found_size is None:
        raise _error("env", "environment variable WORLD_SIZE expected, but not set")
    (rank, rank_src), (world_size, size_src) = found_rank, found_size
    _check_rank_world(
        "env",
        rank,
        world_size,
        "rank" if rank_src == "argument" else rank_src,
        "world_size" if size_src == "argument" else size_src,
    )

    port_text = env.get("MASTER_PORT")
    if port_text is None or port_text.strip() == "":
        raise _error("env", "environment variable MASTER_PORT expected, but not set")
    port = _check_port(
        "env",
        "environment variable MASTER_PORT",
        _parse_int("env", "MASTER_PORT", port_text, "environment variable"),
    )
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        if not _all_ranks_local(env, world_size, size_src):
            raise _error("env", "environment variable MASTER_ADDR expected, but not set")
        addr = "127.0.0.1"
    return addr, port, rank, world_size


def _env_rendezvous(
    query: Mapping[str, int], rank: int, world_size: int, timeout: timedelta, env: Mapping[str, str]
) -> tuple[Store, int, int]:
    addr, port, rank, world_size = _env_params(query, rank, world_size, env)
    secret = _auth.job_secret(env)
    return _tcp_store(addr, port, rank, world_size, timeout, secret), rank, world_size


def _tcp_store(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    timeout: timedelta,
    secret: bytes | None = None,
) -> Store:
    return TCPStore(
        host,
        port,
        world_size=world_size,
        is_master=rank == 0,
        timeout=timeout,
        wait_for_workers=True,
        secret=secret,
    )


def _require(scheme: str, value: int | None, name: str) -> int:
    if value is None:
        raise _error(scheme, f"{name} parameter missing")
    return value


def _url_rank_world(
    scheme: str, query: Mapping[str, int], rank: int, world_size: int
) -> tuple[int, int]:
    """Rank and world size for file:// and tcp://, from the arguments or the query; checked."""
    rank = _require(scheme, _merge(scheme, "rank", rank, query), "rank")
    world_size = _require(scheme, _merge(scheme, "world_size", world_size, query), "world_size")
    _check_rank_world(scheme, rank, world_size, "rank", "world_size")
    return rank, world_size


def _tcp_rendezvous(
    netloc: str, query: Mapping[str, int], rank: int, world_size: int, timeout: timedelta
) -> tuple[Store, int, int]:
    rank, world_size = _url_rank_world("tcp", query, rank, world_size)
    parts = urlsplit(f"tcp://{netloc}")
    try:
        port = parts.port
    except ValueError:
        raise _error("tcp", f"port in {netloc!r} must be an integer in 0..65535") from None
    if not parts.hostname:
        raise _error("tcp", f"host missing in tcp://{netloc} (expected tcp://host:port)")
    if port is None:
        raise _error("tcp", f"port missing in tcp://{netloc} (expected tcp://host:port)")
    _check_port("tcp", "port", port)
    return _tcp_store(parts.hostname, port, rank, world_size, timeout), rank, world_size


def _file_rendezvous(
    netloc: str, path: str, query: Mapping[str, int], rank: int, world_size: int, timeout: timedelta
) -> tuple[Store, int, int]:
    rank, world_size = _url_rank_world("file", query, rank, world_size)
    if netloc not in ("", "localhost"):
        # file://tmp/x parses "tmp" as a host: almost always a missing third slash.
        raise _error("file", f"expected an absolute path like file:///tmp/x, got host {netloc!r}")
    path = unquote(path)
    if not path:
        raise _error("file", "path missing (expected file:///path/to/file)")
    store = FileStore(path, world_size)
    store.set_timeout(timeout)
    return store, rank, world_size


def _mpi_launched(env: Mapping[str, str]) -> bool:
    """Whether an MPI launcher started this process and left the rendezvous to MPI
    (no ``MASTER_ADDR``/``RANK`` of its own), with mpi4py there to ask."""
    if env.get("MASTER_ADDR", "").strip() or env.get("RANK", "").strip():
        return False
    if not any(v in env for v in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE")):
        return False
    return importlib.util.find_spec("mpi4py") is not None


class _MpiMaster(NamedTuple):
    """What rank 0 broadcasts under mpi://: where its store is, or why it is not."""

    host: str
    port: int
    error: str
    secret: bytes | None  # the one it made when the environment had none


def _mpi_rendezvous(
    query: Mapping[str, int], rank: int, world_size: int, timeout: timedelta
) -> tuple[Store, int, int]:
    try:
        from mpi4py import MPI
    except ImportError:
        raise _error("mpi", "mpi4py is not installed (pip install 'mpdist[mpi]')") from None
    comm = MPI.COMM_WORLD
    me, size = comm.Get_rank(), comm.Get_size()
    for name, given, actual in (
        ("rank", _merge("mpi", "rank", rank, query), me),
        ("world_size", _merge("mpi", "world_size", world_size, query), size),
    ):
        if given is not None and given != actual:
            raise _error("mpi", f"{name}={given} was given but MPI.COMM_WORLD says {actual}")
    one_host = len(set(comm.allgather(socket.gethostname()))) == 1
    try:
        own, own_error = _auth.job_secret(), ""
    except ValueError as e:  # raised after the broadcast: rank 0 must not leave the others
        own, own_error = None, str(e)
    found = _MpiMaster("", 0, "", None)
    store: Store | None = None
    if me == 0:
        host = "127.0.0.1" if one_host else socket.gethostbyname(socket.gethostname())
        made = None if own is not None else _auth.new_secret().encode()
        try:
            if own_error:
                raise ValueError(own_error)
            if host.startswith("127.") and not one_host:
                raise ValueError(
                    f"this host's name resolves to {host}, which the other hosts cannot reach; "
                    "set MASTER_ADDR and MASTER_PORT (env://) instead"
                )
            master = TCPStore(
                host,
                0,
                world_size=size,
                is_master=True,
                timeout=timeout,
                wait_for_workers=False,
                secret=made if made is not None else own,
            )
            store, found = master, _MpiMaster(host, master.port, "", made)
        except Exception as e:  # every rank must hear of it, or they wait in bcast
            found = _MpiMaster(host, 0, f"{type(e).__name__}: {e}", None)
    master_at = _MpiMaster(*comm.bcast(tuple(found), root=0))
    if master_at.error:
        raise _error(
            "mpi", f"rank 0 could not start the store on {master_at.host}: {master_at.error}"
        )
    if own_error:
        raise _error("mpi", own_error)
    if store is None:
        store = TCPStore(
            master_at.host,
            master_at.port,
            world_size=size,
            is_master=False,
            timeout=timeout,
            secret=master_at.secret if master_at.secret is not None else own,
        )
    return store, me, size


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"rendezvous {name} must be an int, got {type(value).__name__}")
    return value


def rendezvous(
    init_method: str | None,
    rank: int = -1,
    world_size: int = -1,
    timeout: timedelta = timedelta(seconds=300),
    *,
    environ: Mapping[str, str] | None = None,
) -> tuple[Store, int, int]:
    """Meet the other ranks as ``init_method`` says; return ``(store, rank, world_size)``.

    ``init_method`` is ``None`` (``"env://"``, or ``"mpi://"`` under an MPI launcher:
    see the module docstring), ``"env://"``, ``"mpi://"``,
    ``"file:///path?rank=R&world_size=N"`` or ``"tcp://host:port?rank=R&world_size=N"``.
    ``rank`` / ``world_size`` of ``-1`` mean "not given"; given values override
    the environment (``env://``) and may stand in for the URL's query parameters.
    ``environ`` replaces ``os.environ`` (for tests). Raises ``ValueError`` naming
    the missing or malformed variable or parameter, ``TypeError`` for wrong types.
    """
    env = os.environ if environ is None else environ
    if init_method is None:
        init_method = "mpi://" if _mpi_launched(env) else "env://"
    if not isinstance(init_method, str):
        raise TypeError(f"init_method must be a str or None, got {type(init_method).__name__}")
    rank = _check_int("rank", rank)
    world_size = _check_int("world_size", world_size)
    if not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {type(timeout).__name__}")

    scheme, sep, _ = init_method.partition("://")
    if not sep:
        raise ValueError(
            f"init_method {init_method!r} is not a URL: expected env://, file:///path or tcp://host:port"
        )
    scheme = scheme.lower()
    parts = urlsplit(init_method)
    if scheme not in ("env", "tcp", "file", "mpi"):
        raise ValueError(
            f"No rendezvous handler for {scheme}:// (init_method {init_method!r}); "
            "expected env://, file://, tcp:// or mpi://"
        )
    query = _parse_query(scheme, parts.query)
    if scheme == "env":
        return _env_rendezvous(query, rank, world_size, timeout, env)
    if scheme == "mpi":
        return _mpi_rendezvous(query, rank, world_size, timeout)
    if scheme == "tcp":
        return _tcp_rendezvous(parts.netloc, query, rank, world_size, timeout)
    return _file_rendezvous(parts.netloc, parts.path, query, rank, world_size, timeout)

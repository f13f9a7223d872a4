"""Turn an ``init_method`` URL (``env://``, ``file://``, ``tcp://``) into a store, a rank and a world size.

``init_process_group`` calls :func:`rendezvous` when it is not handed a store.

``env://`` (also what ``None`` means) reads the environment a launcher leaves:

* rank, world size, local rank and local world size, from the first launcher whose
  rank variable is set, in this order: torch's (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``: ``mpdist run``, torchrun), Slurm's ``srun``
  (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NTASKS_PER_NODE``),
  Open MPI (``OMPI_COMM_WORLD_*``), MPICH / Intel MPI's Hydra (``PMI_RANK``,
  ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``), MVAPICH
  (``MV2_COMM_WORLD_*``), PMIx (``PMIX_RANK``); :func:`launch_info` reads them;
* ``MASTER_ADDR`` / ``MASTER_PORT`` when set. Without ``MASTER_ADDR``: ``127.0.0.1``
  when the environment shows every rank runs on this host (world size 1, local world
  size equal to the world size, ``SLURM_NNODES=1``); under Slurm the first host of
  the step's (else the job's) node list, ``node[01-04,07]`` expanded; under an MPI
  launcher on several hosts an error saying to set ``MASTER_ADDR`` or to install the
  ``mpi`` extra (with mpi4py, ``None`` means ``mpi://`` there, see below). Without
  ``MASTER_PORT``: under Slurm a port derived from ``SLURM_JOB_ID`` and
  ``SLURM_STEP_ID``; under an MPI launcher on one host a port derived from the
  launcher's job id (Open MPI's / PMIx's, else the parent process all of this host's
  ranks share, Hydra's proxy); otherwise an error. A silent loopback default in a
  multi-node job would make every node meet only itself and hang until the timeout,
  so there it is an error instead.
* Under torchrun (``TORCHELASTIC_RUN_ID`` set), whose agent already serves its own
  store on ``MASTER_PORT`` (``TORCHELASTIC_USE_AGENT_STORE=True``): when every rank
  runs on this host, a ``FileStore`` in the temporary directory named after the run
  id, ``MASTER_PORT`` and the agent's pid (the ranks' parent), so runs never share
  one; on several hosts a ``ValueError`` at once that says to start the job with
  ``mpdist run``.

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
``PMI_SIZE``, MVAPICH's ``MV2_COMM_WORLD_SIZE``) when neither ``MASTER_ADDR`` nor ``RANK`` is set and mpi4py is installed.
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
import re
import socket
import tempfile
import zlib
from collections.abc import Mapping
from datetime import timedelta
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from mpdist import _auth
from mpdist.store.base import Store
from mpdist.store.file import FileStore
from mpdist.store.tcp import TCPStore, abort_pending

__all__ = ["LaunchInfo", "abort_pending", "launch_info", "rendezvous"]


class _Launcher(NamedTuple):
    """The variables one launcher sets for its processes (None: it sets none)."""

    name: str
    rank: str
    size: str | None
    local_rank: str | None
    local_size: str | None
    mpi: bool  # an MPI launcher: mpi4py can meet the other ranks through it


# By precedence: the first launcher whose rank variable is set gives the rank.
_LAUNCHERS = (
    _Launcher("torch", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", False),
    _Launcher(
        "Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", False
    ),
    _Launcher(
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        True,
    ),
    _Launcher(
        "MPICH/Intel MPI (Hydra)",
        "PMI_RANK",
        "PMI_SIZE",
        "MPI_LOCALRANKID",
        "MPI_LOCALNRANKS",
        True,
    ),
    _Launcher(
        "MVAPICH",
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
        True,
    ),
    _Launcher("PMIx", "PMIX_RANK", None, None, None, True),
)
# The launcher's job id, when there is one, to derive a port all ranks agree on.
_MPI_JOB_IDS = ("OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE", "MPIRUN_ID")
# One host expression of a Slurm node list (text and [ranges] groups), and the whole list.
_HOST_EXPR = re.compile(r"(?:[^,\[\]]|\[[^\[\]]*\])+")
_HOSTLIST = re.compile(rf"{_HOST_EXPR.pattern}(?:,{_HOST_EXPR.pattern})*")
# Derived ports fall below Linux's ephemeral range (32768..), where the OS picks ports.
_DERIVED_PORT_BASE, _DERIVED_PORT_SPAN = 15000, 15000


class LaunchInfo(NamedTuple):
    """Where this process sits in its job, as its launcher's environment says (None: not said)."""

    rank: int | None
    world_size: int | None
    local_rank: int | None
    local_world_size: int | None
    launcher: str | None  # "torch", "Slurm", "Open MPI", ...: whose rank variable was read


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


def _launcher(env: Mapping[str, str]) -> _Launcher | None:
    """The first launcher (by precedence) whose rank variable is set in ``env``."""
    for launcher in _LAUNCHERS:
        if env.get(launcher.rank, "").strip():
            return launcher
    return None


def _optional_int(env: Mapping[str, str], name: str | None) -> int | None:
    text = env.get(name, "").strip() if name is not None else ""
    return _parse_int("env", name or "", text, "environment variable") if text else None


def launch_info(environ: Mapping[str, str] | None = None) -> LaunchInfo:
    """Rank, world size, local rank and local world size from the launcher's variables.

    The launcher is the first (torch's ``RANK``, Slurm, Open MPI, MPICH/Intel MPI Hydra,
    MVAPICH, PMIx) whose rank variable is set; its other variables give the rest, and a
    world size it does not give comes from the first other launcher that does. Raises
    ``ValueError`` naming a variable that is set but not an integer.
    """
    env = os.environ if environ is None else environ
    launcher = _launcher(env)
    if launcher is None:
        return LaunchInfo(None, None, None, None, None)
    size = _optional_int(env, launcher.size)
    if size is None:
        found = _env_int(env, tuple(x.size for x in _LAUNCHERS if x.size is not None), -1)
        size = None if found is None else found[0]
    return LaunchInfo(
        _optional_int(env, launcher.rank),
        size,
        _optional_int(env, launcher.local_rank),
        _optional_int(env, launcher.local_size),
        launcher.name,
    )


def expand_hostlist(nodelist: str) -> list[str]:
    """Slurm's compressed host list as names: ``"node[01-03,07],gpu1"`` -> node01, node02,
    node03, node07, gpu1 (zero padding kept). ``ValueError`` on a malformed list."""
    if not _HOSTLIST.fullmatch(nodelist):
        raise ValueError(f"malformed Slurm node list {nodelist!r}")
    hosts: list[str] = []
    for expr in _HOST_EXPR.findall(nodelist):
        names = [""]
        for text, ranges in re.findall(r"([^\[]+)|\[([^\]]*)\]", expr):
            if text:
                names = [n + text for n in names]
                continue
            items: list[str] = []
            for part in ranges.split(","):
                lo, dash, hi = part.partition("-")
                hi = hi if dash else lo
                if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                    raise ValueError(f"malformed Slurm node list {nodelist!r} (range {part!r})")
                items += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
            names = [n + i for n in names for i in items]
        hosts += names
    return hosts


def derived_port(job_id: str) -> int:
    """A port every rank of a job computes alike from its job id (in 15000..29999, below the
    ephemeral range, so the OS does not hand it out for outgoing connections)."""
    return _DERIVED_PORT_BASE + zlib.crc32(job_id.encode()) % _DERIVED_PORT_SPAN


def _slurm_nodes(env: Mapping[str, str]) -> str | None:
    # The step's nodes, where srun started the ranks (rank 0 on the first); else the job's.
    return (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "").strip() or None


def _all_ranks_local(env: Mapping[str, str], world_size: int, info: LaunchInfo) -> bool:
    """Whether the environment proves every rank runs on this host (then loopback is right)."""
    if world_size == 1:
        return True
    if info.local_world_size == world_size:
        return True
    return info.launcher == "Slurm" and (
        (env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")) == "1"
    )


def _under_torchrun(env: Mapping[str, str]) -> bool:
    """torchrun's agent serves its own (torch) store on MASTER_PORT: not one mpdist can use."""
    return bool(env.get("TORCHELASTIC_RUN_ID")) and env.get(
        "TORCHELASTIC_USE_AGENT_STORE", ""
    ).strip().lower() in ("true", "1")


def _torchrun_store_path(env: Mapping[str, str]) -> str:
    """The FileStore the ranks of one torchrun agent share: the run id, the agent's port and
    the agent's pid (every worker's parent) make it one run's, never an earlier run's."""
    run = re.sub(r"[^A-Za-z0-9_.-]", "_", env.get("TORCHELASTIC_RUN_ID", ""))
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0").strip()
    port = env.get("MASTER_PORT", "").strip()
    name = f"mpdist-torchrun-{run}-{port}-{os.getppid()}-{restart}.store"
    return os.path.join(tempfile.gettempdir(), name)


def _master_port(env: Mapping[str, str], info: LaunchInfo, all_local: bool) -> int:
    port_text = env.get("MASTER_PORT", "").strip()
    if port_text:
        return _check_port(
            "env",
            "environment variable MASTER_PORT",
            _parse_int("env", "MASTER_PORT", port_text, "environment variable"),
        )
    if info.launcher == "Slurm" and env.get("SLURM_JOB_ID", "").strip():
        job = f"{env['SLURM_JOB_ID'].strip()}.{env.get('SLURM_STEP_ID', '').strip()}"
        return derived_port(f"slurm:{job}")
    launcher = next((x for x in _LAUNCHERS if x.name == info.launcher), None)
    if launcher is not None and launcher.mpi and all_local:
        job_id = next((env[v] for v in _MPI_JOB_IDS if env.get(v, "").strip()), None)
        # Hydra names no job: the ranks of one host share their parent, its proxy.
        return derived_port(f"mpi:{job_id or os.getppid()}")
    raise _error("env", "environment variable MASTER_PORT expected, but not set")


def _master_addr(env: Mapping[str, str], info: LaunchInfo, all_local: bool) -> str:
    addr = env.get("MASTER_ADDR", "").strip()
    if addr:
        return addr
    if all_local:
        return "127.0.0.1"
    nodes = _slurm_nodes(env)
    if info.launcher == "Slurm" and nodes is not None:
        try:
            return expand_hostlist(nodes)[0]
        except ValueError as e:
            raise _error("env", f"{e}; set MASTER_ADDR") from None
    launcher = next((x for x in _LAUNCHERS if x.name == info.launcher), None)
    if launcher is not None and launcher.mpi:
        raise _error(
            "env",
            f"environment variable MASTER_ADDR expected, but not set: started by {launcher.name} "
            "on several hosts, set MASTER_ADDR (the host of rank 0) and MASTER_PORT, or install "
            "the mpi extra (pip install 'mpdist[mpi]') and use init_method='mpi://' "
            "(the default under an MPI launcher when mpi4py is installed)",
        )
    raise _error("env", "environment variable MASTER_ADDR expected, but not set")


def _env_ranks(
    query: Mapping[str, int], rank: int, world_size: int, env: Mapping[str, str]
) -> tuple[int, int]:
    """env://'s rank and world size: the arguments, else the launchers' variables; checked."""
    rank_arg = _merge("env", "rank", rank, query)
    size_arg = _merge("env", "world_size", world_size, query)
    ranks = tuple(x.rank for x in _LAUNCHERS)
    found_rank = _env_int(env, ranks, -1 if rank_arg is None else rank_arg)
    if found_rank is None:
        raise _error("env", "environment variable RANK expected, but not set")
    sizes = tuple(x.size for x in _LAUNCHERS if x.size is not None)
    found_size = _env_int(env, sizes, -1 if size_arg is None else size_arg)
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
    return rank, world_size


def _env_params(
    query: Mapping[str, int], rank: int, world_size: int, env: Mapping[str, str]
) -> tuple[str, int, int, int]:
    """Resolve env:// to ``(master_addr, master_port, rank, world_size)``; opens nothing."""
    rank, world_size = _env_ranks(query, rank, world_size, env)
    info = launch_info(env)
    all_local = _all_ranks_local(env, world_size, info)
    addr = _master_addr(env, info, all_local)
    return addr, _master_port(env, info, all_local), rank, world_size


def _torchrun_store(
    query: Mapping[str, int], rank: int, world_size: int, timeout: timedelta, env: Mapping[str, str]
) -> tuple[Store, int, int]:
    rank, world_size = _env_ranks(query, rank, world_size, env)
    if not _all_ranks_local(env, world_size, launch_info(env)):
        raise _error(
            "env",
            "started by torchrun on several hosts: torchrun's agent serves its own store on "
            f"MASTER_PORT={env.get('MASTER_PORT', '?')} (TORCHELASTIC_USE_AGENT_STORE=True), "
            "which mpdist cannot share; start the job with `mpdist run` (python -m mpdist run "
            "--nnodes N --node-rank R --master-addr A --master-port P --nproc K script.py) instead",
        )
    store = FileStore(_torchrun_store_path(env), world_size)
    store.set_timeout(timeout)
    return store, rank, world_size


def _env_rendezvous(
    query: Mapping[str, int], rank: int, world_size: int, timeout: timedelta, env: Mapping[str, str]
) -> tuple[Store, int, int]:
    if _under_torchrun(env):
        return _torchrun_store(query, rank, world_size, timeout, env)
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
    if _under_torchrun(env) or not any(
        v in env for v in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
    ):
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

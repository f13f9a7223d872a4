"""The module-level API (``torch.distributed`` on numpy arrays): setup, groups, collectives.

A package split by concern (see ARCHITECTURE.md): ``_world`` (the state: worlds and
registries), ``setup``, ``queries``, ``_checks``, ``collectives``,
``object_collectives``, ``debug`` (what the test harness asks of the library).

This is the only package that knows "the default group". Every function takes global
ranks, checks its arguments locally (``TypeError`` / ``ValueError`` before anything is
sent), translates ranks to group ranks and calls the group's torch-style method with
an options object (``pg.allreduce([t], opts) -> Work``), for mpdist's own groups and
Python subclasses alike. ``opts.asyncOp`` (point-to-point: ``caller_blocks()``) tells
the group whether the caller waits at once, so mpdist's groups run blocking calls in
the calling thread.

The default group and the groups made by ``new_group`` form a "world". A process has
one world, except under the ``threaded`` backend, where each rank thread has its own
(thread-local) world.
"""

from __future__ import annotations

from mpdist.distributed._world import GroupMember as GroupMember
from mpdist.distributed._world import group as group
from mpdist.distributed._world import is_available as is_available
from mpdist.distributed._world import is_initialized as is_initialized
from mpdist.distributed.collectives import P2POp as P2POp
from mpdist.distributed.collectives import all_gather as all_gather
from mpdist.distributed.collectives import all_gather_into_tensor as all_gather_into_tensor
from mpdist.distributed.collectives import all_gather_single as all_gather_single
from mpdist.distributed.collectives import all_reduce as all_reduce
from mpdist.distributed.collectives import all_to_all as all_to_all
from mpdist.distributed.collectives import all_to_all_single as all_to_all_single
from mpdist.distributed.collectives import barrier as barrier
from mpdist.distributed.collectives import batch_isend_irecv as batch_isend_irecv
from mpdist.distributed.collectives import broadcast as broadcast
from mpdist.distributed.collectives import gather as gather
from mpdist.distributed.collectives import irecv as irecv
from mpdist.distributed.collectives import isend as isend
from mpdist.distributed.collectives import monitored_barrier as monitored_barrier
from mpdist.distributed.collectives import recv as recv
from mpdist.distributed.collectives import reduce as reduce
from mpdist.distributed.collectives import reduce_scatter as reduce_scatter
from mpdist.distributed.collectives import reduce_scatter_single as reduce_scatter_single
from mpdist.distributed.collectives import reduce_scatter_tensor as reduce_scatter_tensor
from mpdist.distributed.collectives import scatter as scatter
from mpdist.distributed.collectives import send as send
from mpdist.distributed.object_collectives import all_gather_object as all_gather_object
from mpdist.distributed.object_collectives import broadcast_object_list as broadcast_object_list
from mpdist.distributed.object_collectives import gather_object as gather_object
from mpdist.distributed.object_collectives import recv_object_list as recv_object_list
from mpdist.distributed.object_collectives import scatter_object_list as scatter_object_list
from mpdist.distributed.object_collectives import send_object_list as send_object_list
from mpdist.distributed.queries import _get_default_group as _get_default_group
from mpdist.distributed.queries import _get_default_store as _get_default_store
from mpdist.distributed.queries import _register_process_group as _register_process_group
from mpdist.distributed.queries import _resolve_process_group as _resolve_process_group
from mpdist.distributed.queries import _unregister_process_group as _unregister_process_group
from mpdist.distributed.queries import get_backend as get_backend
from mpdist.distributed.queries import get_global_rank as get_global_rank
from mpdist.distributed.queries import get_group_rank as get_group_rank
from mpdist.distributed.queries import get_process_group_ranks as get_process_group_ranks
from mpdist.distributed.queries import get_rank as get_rank
from mpdist.distributed.queries import get_world_size as get_world_size
from mpdist.distributed.setup import destroy_process_group as destroy_process_group
from mpdist.distributed.setup import init_process_group as init_process_group
from mpdist.distributed.setup import new_group as new_group

__all__ = [
    "GroupMember",
    "P2POp",
    "batch_isend_irecv",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_gather_object",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "destroy_process_group",
    "gather",
    "gather_object",
    "get_backend",
    "get_global_rank",
    "get_group_rank",
    "get_process_group_ranks",
    "get_rank",
    "get_world_size",
    "group",
    "init_process_group",
    "irecv",
    "is_available",
    "is_initialized",
    "isend",
    "monitored_barrier",
    "new_group",
    "recv",
    "recv_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_single",
    "scatter",
    "scatter_object_list",
    "send",
    "send_object_list",
]

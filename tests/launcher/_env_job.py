"""One rank of a launcher-variable test: meet the others through env:// (or the default), all_reduce, print a JSON line."""

import json
import sys

import numpy as np

import mpdist
from mpdist.store.rendezvous import launch_info

init_method = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "default" else None
mpdist.init_process_group(backend="tcp", init_method=init_method)
rank, size = mpdist.get_rank(), mpdist.get_world_size()
x = np.array([float(rank + 1)])
mpdist.all_reduce(x)
info = launch_info()
print(
    json.dumps(
        {
            "rank": rank,
            "world_size": size,
            "sum": float(x[0]),
            "local_rank": info.local_rank,
            "local_world_size": info.local_world_size,
            "launcher": info.launcher,
        }
    ),
    flush=True,
)
mpdist.destroy_process_group()

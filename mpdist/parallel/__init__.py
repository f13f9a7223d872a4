"""Data parallelism on mpdist: ``DistributedDataParallel``, composable ``replicate``,
communication hooks (``mpdist.parallel.hooks``) and differentiable collectives
(``mpdist.parallel.functional``).

    import mpdist.distributed as dist
    from mpdist import nn
    from mpdist.nn import functional as F
    from mpdist.optim import SGD
    from mpdist.parallel import DistributedDataParallel as DDP

    dist.init_process_group()                 # under `python -m mpdist run --nproc N ...`
    model = DDP(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1)))
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in my_shard_of_the_data:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()   # gradients are averaged across ranks here
        opt.step()

See ``examples/ddp_train.py`` for a complete program.
"""

from __future__ import annotations

from mpdist.parallel import functional, hooks
from mpdist.parallel.ddp import DistributedDataParallel
from mpdist.parallel.reducer import GradBucket
from mpdist.parallel.replicate import replicate


def __getattr__(name: str) -> object:
    # mpdist.fsdp builds on this package, so its re-export is resolved on first use
    if name == "FullyShardedDataParallel":
        from mpdist.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel
    if name == "fully_shard":
        from mpdist.fsdp import fully_shard

        return fully_shard
    raise AttributeError(f"module 'mpdist.parallel' has no attribute {name!r}")


__all__ = [
    "DistributedDataParallel",
    "FullyShardedDataParallel",
    "GradBucket",
    "fully_shard",
    "functional",
    "hooks",
    "replicate",
]

"""Train a small MLP with DistributedDataParallel on a synthetic regression task.

    python -m mpdist run --nproc 2 examples/ddp_train.py [--epochs 10]

Every rank starts from a different random model on purpose: DDP broadcasts rank 0's
parameters at construction. Each epoch the ranks shuffle the same dataset the same way and
take disjoint shards; DDP averages gradients, so every rank takes the same optimizer step.
Rank 0 prints the loss per epoch (averaged over ranks) and, at the end, checks that the
parameters are bitwise identical on every rank.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import mpdist
import mpdist.distributed as dist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.parallel import DistributedDataParallel as DDP


def make_data(n: int, d: int, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of a smooth nonlinear teacher plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w1 = rng.standard_normal((d, 32)).astype(np.float32) / np.sqrt(d)
    w2 = rng.standard_normal((32, 1)).astype(np.float32) / np.sqrt(32)
    y = np.tanh(x @ w1) @ w2 + 0.01 * rng.standard_normal((n, 1)).astype(np.float32)
    return x, y.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Train, print the loss per epoch from rank 0, verify the replicas agree."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--backend", default="tcp")
    args = p.parse_args(argv)

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        mpdist.manual_seed(rank)  # different on every rank; DDP makes them equal
        model = nn.Sequential(
            nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )
        ddp = DDP(model)
        opt = SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
        x, y = make_data(args.samples, 16)
        if rank == 0:
            n_params = sum(q.numel() for q in model.parameters())
            print(
                f"training a {n_params}-parameter MLP on {world} ranks, {args.samples} samples",
                flush=True,
            )
        for epoch in range(args.epochs):
            order = np.random.default_rng(epoch).permutation(len(x))  # same on every rank
            shard = order[rank::world]
            total = np.zeros(2)  # (sum of losses, number of batches)
            for start in range(0, len(shard) - args.batch_size + 1, args.batch_size):
                idx = shard[start : start + args.batch_size]
                opt.zero_grad()
                loss = F.mse_loss(ddp(x[idx]), y[idx])
                loss.backward()
                opt.step()
                total += (loss.item(), 1)
            dist.all_reduce(total)
            if rank == 0:
                print(f"epoch {epoch + 1:3d}  loss {total[0] / total[1]:.6f}", flush=True)

        flat = np.concatenate([q.data.reshape(-1) for q in model.parameters()])
        copies = [np.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        same = all(np.array_equal(c, copies[0]) for c in copies)
        if rank == 0:
            if same:
                print(f"parameters identical on all {world} ranks", flush=True)
            else:
                bad = [r for r, c in enumerate(copies) if not np.array_equal(c, copies[0])]
                print(f"parameters DIFFER on ranks {bad}", flush=True)
        return 0 if same else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

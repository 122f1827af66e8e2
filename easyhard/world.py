"""This process's place among data-parallel processes (``torchrun``; gloo on CPU, nccl on GPU).

Bottom-level: imports nothing from the project. Every rank holds the same model and draws the same
logical Poisson batch, the same K noise draws per example and the same DP noise (one shared noise
stream). Rank ``r`` computes the clipped per-example gradients of examples ``r, r + W, r + 2W, ...``;
the clipped sums are summed across ranks in a single all-reduce; each rank adds the identical
Gaussian draw, so noise enters exactly once per logical batch and the update equals the
single-process update. The ledger is unchanged: the mechanism (noise multiplier, sample rate,
steps) does not depend on the number of processes. The launcher is
:mod:`easyhard.pipeline.launch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` data-parallel processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> Tensor:
        """Indices of the examples (out of ``n``) this rank processes."""
        return torch.arange(self.rank, n, self.size)

    def all_reduce_sum(self, tensors: list[Tensor]) -> None:
        """Sum ``tensors`` in place across ranks in one collective call (float64 on the wire)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(tensors[0].device, torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].reshape(t.shape))
            offset += n

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank, sent over the process group in memory (never a file)."""
        if self.size == 1:
            if data is None:
                raise ValueError("broadcast_bytes: rank 0 must give the data")
            return data
        import torch.distributed as dist

        box = [data if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE_PROCESS = World()


def init_from_env(device: str = "cpu") -> World:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, ...); one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE_PROCESS
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return World(rank=rank, size=dist.get_world_size())


def shutdown(world: World) -> None:
    """Leave the process group."""
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

"""torchrun support: join the process group, and leave it together once training is done."""

from __future__ import annotations

import os

import torch


def distributed_context(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group when started by ``torchrun`` with N > 1.

    gloo on CPU, nccl on GPU. Each rank trains on its own slice of every batch and DDP averages
    the gradients, so N processes compute the same update as one process on the whole batch.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def leave_process_group(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)`` once every rank is done: they meet and leave the group together.

    Under ``torchrun`` rank 0 then writes the outputs alone; the others return.
    """
    rank, world = distributed_context(device)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return rank, world

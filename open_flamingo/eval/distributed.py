"""Processes of an evaluation: launched by torchrun or `accelerate launch` (WORLD_SIZE > 1), each
evaluates whole batches of the plan; predictions are gathered on rank 0, which scores them."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(
    dist_url: str = "env://", dist_backend: str | None = None, set_device_rank: bool = True
) -> World:
    """Join the process group when launched with WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank if set_device_rank else 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, init_method=dist_url, rank=rank, world_size=world_size)
    return World(rank, world_size, device)


def gather_to_main(items: list, world: World) -> list | None:
    """Every process's list, concatenated in rank order on rank 0; None on other ranks."""
    if world.world_size == 1:
        return list(items)
    gathered = [None] * world.world_size if world.is_main else None
    dist.gather_object(items, gathered, dst=0)
    if not world.is_main:
        return None
    return [item for part in gathered for item in part]


def barrier(world: World) -> None:
    if world.world_size > 1:
        dist.barrier()

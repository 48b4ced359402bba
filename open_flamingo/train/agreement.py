"""Decisions every rank must take alike, made with one small reduction.

A rank that stops alone leaves the others waiting at the next collective forever. So a failure
or a stop request seen by one rank (a full disk, a signal) is shared with `any_rank`, and a
choice that only the main process makes (which checkpoint to resume) with `from_main`. Each is
one all-reduce of a few integers, and a barrier too: every rank must call it, in the same order.
"""

import torch
import torch.distributed as dist


def _sum(accelerator, values: list[int]) -> list[int]:
    """Elementwise sums over the default process group (of whichever backend made it)."""
    tensor = torch.tensor(values, dtype=torch.int64, device=accelerator.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def any_rank(accelerator, flag: bool) -> bool:
    """Whether `flag` is true on at least one rank (the same answer on every rank)."""
    return _sum(accelerator, [int(bool(flag))])[0] > 0


def from_main(accelerator, values: list[int]) -> list[int]:
    """The main process's `values` on every rank (other ranks' arguments are ignored)."""
    mine = values if accelerator.is_main_process else [0] * len(values)
    return _sum(accelerator, mine)

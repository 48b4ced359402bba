"""What FSDP2 needs done differently: its parameters are sharded DTensors.

`accelerator.prepare` under the fsdp config calls `fully_shard`, which replaces every parameter
by a DTensor holding this rank's rows (Shard(0)) and reduces gradients itself. Hence:

* the input-embedding row mask cannot be a tensor hook on the original weight (that tensor is no
  longer used): `mask_embedding_rows` masks each rank's gradient shard after the backward of an
  accumulation boundary instead, which equals masking before the reduction;
* `checkpoint.pt` needs whole tensors: `full_released_weights` gathers the released ones;
* the optimizer state is saved whole (`full_optimizer_state`, keyed by parameter name) and
  re-sharded on load (`load_full_state`), so a checkpoint does not depend on the shard layout.

Plain `torch.distributed.checkpoint.state_dict` calls; all ranks must call each function (they
gather or scatter), in the same order.
"""

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from open_flamingo.src.checkpoint import trainable_state_dict


def uses_fsdp(accelerator) -> bool:
    return accelerator.distributed_type.name == "FSDP"


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a gather: every rank calls it); others as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def mask_embedding_rows(weight: torch.nn.Parameter, token_ids: list[int]) -> None:
    """Zero the gradient of `weight` (V, D), sharded or not, outside the `token_ids` rows."""
    if weight.grad is None:
        return
    full = torch.zeros(weight.shape[0], 1, dtype=weight.grad.dtype, device=weight.grad.device)
    full[token_ids] = 1
    if isinstance(weight.grad, DTensor):  # this rank's rows of the mask; no communication
        grad = weight.grad
        full = distribute_tensor(full, grad.device_mesh, grad.placements, src_data_rank=None)
    weight.grad.mul_(full)


def full_released_weights(model: torch.nn.Module, main_process: bool) -> dict[str, torch.Tensor]:
    """`trainable_state_dict(model)` as whole CPU tensors on the main process ({} elsewhere)."""
    weights = {}
    for name, value in trainable_state_dict(model).items():
        gathered = whole(value)
        if main_process:
            weights[name] = gathered.detach().cpu().clone()
    return weights


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state with whole tensors, keyed by parameter name, on the CPU."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict,
) -> None:
    """Shard whole released weights and a `full_optimizer_state` into `model` and `optimizer`
    (every rank passes the same whole tensors; the frozen weights stay as they are)."""
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

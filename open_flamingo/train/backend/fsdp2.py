"""FSDP2 (accelerate's fsdp config, `fsdp_version: 2`): the parameters are sharded DTensors.

`accelerator.prepare` calls `fully_shard`, which replaces every parameter by a DTensor holding
this rank's rows (Shard(0)), and reduce-scatters gradients itself. Hence:

* the input-embedding row mask cannot be a gradient hook on the weight: the forward uses an
  unsharded copy that FSDP gathers each time, not the registered parameter. Each rank masks its
  gradient shard after the backward of an accumulation boundary instead, which equals masking
  before the reduction (the mask is per row, the reduction a sum), then clips;
* the gradient norm is a DTensor: its whole value is gathered;
* `checkpoint.pt` needs whole tensors: the released ones are gathered;
* the optimizer state is saved whole (keyed by parameter name) and re-sharded on load, so a
  checkpoint does not depend on the shard layout.

Plain `torch.distributed.checkpoint.state_dict` calls; every rank calls each function here
(they gather or scatter), in the same order.
"""

from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from open_flamingo.src.checkpoint import trainable_state_dict

from ..checkpoint_io import load_file
from .base import TrainingBackend


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


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """torch's optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


class FSDP2Backend(TrainingBackend):
    name = "FSDP2"
    one_weight_dtype = True  # FSDP flattens each unit's parameters into one tensor of one dtype

    def __init__(self, accelerator):
        super().__init__(accelerator)
        self.embedding_rows: list[int] | None = None  # masked in `clip_gradients`
        self._embedding: torch.nn.Module | None = None

    def mask_embedding_gradient(self, model: torch.nn.Module, token_ids: list[int]) -> None:
        self.embedding_rows = list(token_ids)

    def wrap(self, model: torch.nn.Module, optimizer):
        model, optimizer = super().wrap(model, optimizer)
        self._embedding = self.accelerator.unwrap_model(model).lang_encoder.get_input_embeddings()
        return model, optimizer

    def clip_gradients(self, parameters: list, max_norm: float) -> torch.Tensor:
        if self.embedding_rows:
            mask_embedding_rows(self._embedding.weight, self.embedding_rows)
        return whole(self.accelerator.clip_grad_norm_(parameters, max_norm))

    def released_weights(self, model) -> dict[str, torch.Tensor]:
        weights = {}
        for name, value in trainable_state_dict(self.accelerator.unwrap_model(model)).items():
            gathered = whole(value)
            if self.accelerator.is_main_process:
                weights[name] = gathered.detach().cpu().clone()
        return weights

    def optimizer_files(self, model, optimizer) -> dict:
        """`optimizer.pt`: the state with whole tensors, keyed by parameter name, on the CPU."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=options)
        return {"optimizer.pt": state}

    def load_state(self, model, optimizer, folder: Path) -> None:
        """Shard the whole released weights and optimizer state into `model` and `optimizer`
        (every rank reads the same files; the frozen weights stay as they are)."""
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, load_file(folder / "checkpoint.pt"), options=options)
        optimizer_state = load_file(folder / "optimizer.pt")
        set_optimizer_state_dict(
            model, _torch_optimizer(optimizer), optimizer_state, options=options
        )

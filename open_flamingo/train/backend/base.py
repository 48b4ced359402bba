"""The training backend's interface, with the behaviour of one process training alone.

A backend owns everything the trainer does differently under DDP, DeepSpeed ZeRO and FSDP2
(`choose_backend` picks one per run; each subclass overrides only what differs):

* preparing: the weight dtypes of `--precision`, the input-embedding rows that train, and
  `accelerator.prepare` of the model and optimizer;
* the micro-step's gradients: when they are reduced, masked and clipped;
* the model and optimizer state of a checkpoint: what `checkpoint.pt` and the optimizer files
  hold, and how they are written and read back. `checkpointing.py` writes everything else, and
  every file goes through `checkpoint_io.py`'s verified writing and reading.
"""

import contextlib
from pathlib import Path

import torch
from torch.utils.hooks import RemovableHandle

from open_flamingo.src.checkpoint import load_checkpoint, trainable_state_dict

from ..checkpoint_io import CheckpointWriteError, load_file
from ..precision import cast_for_precision


def keep_embedding_rows(model: torch.nn.Module, token_ids: list[int]) -> RemovableHandle:
    """Keep the input-embedding gradient only on `token_ids` rows (upstream trains only the
    `<image>` / `<|endofchunk|>` rows). A hook on the weight's gradient: it sees the whole
    gradient of the weight (a tied LM head's too) before DDP or DeepSpeed reduce it. Returns
    the hook's handle."""
    weight = model.lang_encoder.get_input_embeddings().weight  # (V, D)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[token_ids] = 1

    def keep_rows(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(device=grad.device, dtype=grad.dtype)

    return weight.register_hook(keep_rows)


class TrainingBackend:
    """One process on one device: the model as it is, accelerate's clipping, a plain
    `optimizer.pt`."""

    one_weight_dtype = False  # whether the engine needs every weight in one dtype (precision.py)

    def __init__(self, accelerator):
        self.accelerator = accelerator

    @property
    def name(self) -> str:
        """What the run's start-up line calls this backend."""
        return "plain PyTorch"

    # ------------------------------------------------------------------ preparing
    @property
    def optimizer_offloaded(self) -> bool:
        """Whether the optimizer steps on the CPU (`optim.build_optimizer(cpu_offload=)`)."""
        return False

    def prepare_model(
        self, model: torch.nn.Module, precision: str, trainable_embedding_rows=None
    ) -> None:
        """Before the optimizer is built: train only `trainable_embedding_rows` of the input
        embedding (None: it is frozen), and cast the weights for `--precision`."""
        if trainable_embedding_rows:
            self.mask_embedding_gradient(model, trainable_embedding_rows)
        cast_for_precision(model, precision, one_weight_dtype=self.one_weight_dtype)

    def mask_embedding_gradient(self, model: torch.nn.Module, token_ids: list[int]) -> None:
        keep_embedding_rows(model, token_ids)

    def wrap(self, model: torch.nn.Module, optimizer):
        """`accelerator.prepare`: the model and optimizer to train with (moved to the device,
        wrapped or sharded by the engine)."""
        return self.accelerator.prepare(model, optimizer)

    # ------------------------------------------------------------------ the micro-step
    def deferred_gradient_sync(self, model) -> contextlib.AbstractContextManager:
        """Around a forward whose backward must not reduce gradients across processes on its
        own (the first of the step's two forwards; their summed loss has one backward)."""
        return contextlib.nullcontext()

    def clip_gradients(self, parameters: list, max_norm: float) -> torch.Tensor | None:
        """At an accumulation boundary, after the backward: clip the gradients, reduced across
        processes, to `max_norm`. Returns their norm before clipping, the same on every rank
        (None where the engine clips inside its own step)."""
        return self.accelerator.clip_grad_norm_(parameters, max_norm)

    # ------------------------------------------------------------------ checkpoint state
    def released_weights(self, model) -> dict[str, torch.Tensor]:
        """`checkpoint.pt`'s tensors (`trainable_state_dict`), whole and on the CPU, on the main
        process ({} on the others). Every rank calls it."""
        if not self.accelerator.is_main_process:
            return {}
        weights = trainable_state_dict(self.accelerator.unwrap_model(model))
        return {name: value.detach().cpu().clone() for name, value in weights.items()}

    def optimizer_files(self, model, optimizer) -> dict:
        """The optimizer's files that the main process writes: file name -> torch object.
        Every rank calls it."""
        return {"optimizer.pt": optimizer.state_dict()}

    def write_engine_files(self, model, folder: Path) -> CheckpointWriteError | None:
        """Files the engine writes itself, every rank its own, into the checkpoint folder
        being written. Returns a failure instead of raising (every rank must still reach the
        engine's barriers)."""
        return None

    def load_state(self, model, optimizer, folder: Path) -> None:
        """Restore the weights and the optimizer from a checkpoint folder that
        `checkpointing.validate_checkpoint` accepted."""
        load_checkpoint(self.accelerator.unwrap_model(model), load_file(folder / "checkpoint.pt"))
        optimizer.load_state_dict(load_file(folder / "optimizer.pt"))

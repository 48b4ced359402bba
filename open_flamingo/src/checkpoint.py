"""OpenFlamingo checkpoints: export the released `checkpoint.pt`, read any saved form, load.

Which key loads where (our names, upstream's aliases, transformers-4 names) is in
checkpoint_keys.py; whether a checkpoint fits a model, in checkpoint_fit.py. Plain
`model.load_state_dict(torch.load(path), strict=False)` loads every released layout and reports
keys that land nowhere as unexpected; `load_checkpoint` also refuses a checkpoint whose
perceiver, cross-attention or embedding weights do not fit, naming the likely cause.
"""

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint_fit import check_checkpoint_fits
from .checkpoint_keys import required_checkpoint_keys

logger = logging.getLogger(__name__)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The released `checkpoint.pt` content: trainable weights plus the input embedding.

    The embedding is kept even when frozen: it holds the `<image>` / `<|endofchunk|>` rows, which
    must be identical across initialisations.
    """
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    keep.update(required_checkpoint_keys(model))
    return {k: v.detach() for k, v in model.state_dict().items() if k in keep}


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrapper_names(key: str) -> str:
    """Remove DDP / torch.compile / activation-checkpoint wrapper names from a key."""
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.replace("._checkpoint_wrapped_module", "").replace("._orig_mod", "")


def read_checkpoint(checkpoint: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """A flat state dict from a path or dict: released `checkpoint.pt`, a full state dict, or an
    upstream training checkpoint (`{"model_state_dict": ...}`), wrapper prefixes removed."""
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model_state_dict" in checkpoint:
        checkpoint = checkpoint["model_state_dict"]
    return {_strip_wrapper_names(k): v for k, v in checkpoint.items()}


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping):
    """Load an OpenFlamingo checkpoint (any form `read_checkpoint` reads) into a Flamingo model.

    Raises CheckpointMismatchError (a ValueError), before anything is loaded, if a perceiver,
    cross-attention or input-embedding weight is missing or has another shape, or if the
    checkpoint holds such weights that land nowhere (cross-attention of another
    `cross_attn_every_n_layers`). Other keys that land nowhere are logged.

    Returns the `load_state_dict` result (missing / unexpected keys).
    """
    state_dict = read_checkpoint(checkpoint)
    check_checkpoint_fits(model, state_dict)
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys:
        logger.warning(
            "%d checkpoint key(s) are not in this model and were ignored, e.g. %s",
            len(result.unexpected_keys),
            result.unexpected_keys[0],
        )
    return result

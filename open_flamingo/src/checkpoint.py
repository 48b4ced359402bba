"""Checkpoints in OpenFlamingo's format.

Our module tree stores each weight once:

* `perceiver.*`
* `lang_encoder.gated_cross_attn_layers.{i}.*` (the released `checkpoint.pt` keys)
* `lang_encoder.<decoder layers>.{i}.decoder_layer.*` (the LM's own layers)
* `lang_encoder.<input embedding>.weight`, `vision_encoder.*`, and the rest of the LM.

open-flamingo 2.0.x registered modules under alias names too, so its files may hold:

* `lang_encoder.<decoder layers>.{i}.gated_cross_attn_layer.*` (same tensors as
  `gated_cross_attn_layers.{i}`; 2.0's training code saved only these),
* `lang_encoder.old_decoder_blocks.{i}.*` (same tensors as `...{i}.decoder_layer.*`).

`map_upstream_aliases` runs before every `Flamingo.load_state_dict`, so plain
`model.load_state_dict(torch.load(path), strict=False)` loads any of these layouts (and plain
Hugging Face layer keys `lang_encoder.<decoder layers>.{i}.<name>`).
"""

import os
import re
from collections.abc import Mapping

import torch
from torch import nn


def _canonical_key(key: str, decoder_layers_attr_name: str) -> str | None:
    """Our key for an upstream alias key, or None if `key` is not an alias."""
    layers = re.escape(f"lang_encoder.{decoder_layers_attr_name}")
    match = re.match(rf"^{layers}\.(\d+)\.gated_cross_attn_layer\.(.+)$", key)
    if match:
        return f"lang_encoder.gated_cross_attn_layers.{match[1]}.{match[2]}"
    match = re.match(r"^lang_encoder\.old_decoder_blocks\.(\d+)\.(.+)$", key)
    if not match:
        match = re.match(rf"^{layers}\.(\d+)\.(?!decoder_layer\.)(.+)$", key)
    if match:
        return f"lang_encoder.{decoder_layers_attr_name}.{match[1]}.decoder_layer.{match[2]}"
    return None


def map_upstream_aliases(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """`load_state_dict` pre-hook of Flamingo: rename alias keys in place (canonical keys win)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        target = _canonical_key(key[len(prefix) :], module.decoder_layers_attr_name)
        if target is not None:
            value = state_dict.pop(key)
            state_dict.setdefault(prefix + target, value)


def input_embedding_key(model: nn.Module) -> str:
    """State-dict key of the LM's input embedding weight, e.g. `lang_encoder.transformer.wte.weight`."""
    embedding = model.lang_encoder.get_input_embeddings()
    for name, module in model.lang_encoder.named_modules():
        if module is embedding:
            return f"lang_encoder.{name}.weight"
    raise ValueError("The language model's input embedding is not one of its submodules.")


def required_checkpoint_keys(model: nn.Module) -> list[str]:
    """Keys a Flamingo checkpoint must provide: perceiver, cross-attention, input embedding."""
    keys = [
        k
        for k in model.state_dict()
        if k.startswith("perceiver.") or k.startswith("lang_encoder.gated_cross_attn_layers.")
    ]
    return keys + [input_embedding_key(model)]


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
    """Load an OpenFlamingo checkpoint, refusing one that lacks a perceiver, cross-attention or
    input-embedding weight (which `load_state_dict(strict=False)` would silently skip).

    Returns the `load_state_dict` result (missing / unexpected keys).
    """
    state_dict = read_checkpoint(checkpoint)
    result = model.load_state_dict(state_dict, strict=False)
    missing = sorted(set(required_checkpoint_keys(model)) & set(result.missing_keys))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise KeyError(
            f"Checkpoint lacks {len(missing)} Flamingo weight(s): {shown}. Is it a checkpoint of "
            "this architecture (same LM family, cross_attn_every_n_layers and vision encoder)?"
        )
    return result

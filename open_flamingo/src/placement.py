"""A Flamingo whose LM was placed by a `device_map` (one device, or dispatched over several by
accelerate's big-model inference): the parts Flamingo adds go beside the LM parts they work
with.

* the vision encoder and the perceiver: on the device that runs the LM's input embedding
  (the media latents are made there, where the text starts);
* gated cross-attention block i: on the device that runs decoder layer i, which it precedes.
  The block moves the hidden states, latents and media positions it gets to its own device
  (`FlamingoDecoderLayer`); `.to` of a tensor already there is free, so an LM on one device
  pays nothing.

"Runs" is accelerate's execution device: a layer offloaded to the CPU or disk has its weights
there (or on the meta device) but runs on the main device.
"""

import torch
from torch import nn

from .lm_registry import get_submodule_by_path


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device, else (or for a module
    inside a dispatched one) its first parameter's device that is not meta."""
    hook = getattr(module, "_hf_hook", None)
    for part in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        device = getattr(part, "execution_device", None)
        if device is not None:
            return torch.device(device)
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    raise ValueError(f"cannot tell where {type(module).__name__} runs: all its weights are meta")


def place_beside_lm(model: nn.Module) -> None:
    """Move the vision encoder, perceiver and gated blocks of a Flamingo beside its LM, wherever
    a `device_map` put the LM's parts (transformers records a map over several devices as
    `hf_device_map`, and none for one device: the parts' own devices are what counts)."""
    lang_encoder = model.lang_encoder
    first = execution_device(lang_encoder.get_input_embeddings())
    model.vision_encoder.to(first)
    model.perceiver.to(first)
    layers = get_submodule_by_path(lang_encoder, model.decoder_layers_attr_name)
    for layer, block in zip(layers, lang_encoder.gated_cross_attn_layers, strict=True):
        if block is not None:
            block.to(execution_device(layer.decoder_layer))

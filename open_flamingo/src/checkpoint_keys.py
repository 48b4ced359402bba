"""Where each key of an OpenFlamingo checkpoint loads in our module tree.

Our module tree stores each weight once:

* `perceiver.*`
* `lang_encoder.gated_cross_attn_layers.{i}.*` (the released `checkpoint.pt` keys)
* `lang_encoder.<decoder layers>.{i}.decoder_layer.*` (the LM's own layers)
* `lang_encoder.<input embedding>.weight`, `vision_encoder.*`, and the rest of the LM.

open-flamingo 2.0.x registered modules under alias names too, and ran transformers 4, so its
files may hold:

* `lang_encoder.<decoder layers>.{i}.gated_cross_attn_layer.*` (same tensors as
  `gated_cross_attn_layers.{i}`; 2.0's training code saved only these),
* `lang_encoder.old_decoder_blocks.{i}.*` (same tensors as `...{i}.decoder_layer.*`),
* `lang_encoder.<decoder layers>.{i}.<name>` (a plain Hugging Face layer key),
* `lang_encoder.embed_out.weight`: GPT-NeoX's output head, `lm_head` since transformers 5.

`map_upstream_aliases` runs before every `Flamingo.load_state_dict`, so plain
`model.load_state_dict(torch.load(path), strict=False)` loads any of these layouts. It also
reports keys that land nowhere as unexpected, including those torch alone would drop without a
word: a ModuleList entry that is None (a decoder layer without cross-attention) takes every key
under it, so the blocks of a checkpoint with another `cross_attn_every_n_layers` vanished.
"""

import re
from collections.abc import Iterable

from torch import nn

# transformers 5 renamed these LM modules; upstream's files (transformers 4) use the old names.
_RENAMED_BY_TRANSFORMERS_5 = (("lang_encoder.embed_out.", "lang_encoder.lm_head."),)  # GPT-NeoX


def upstream_alias_target(key: str, decoder_layers_attr_name: str) -> str | None:
    """Our key for an upstream alias or transformers-4 key, or None if `key` is neither."""
    layers = re.escape(f"lang_encoder.{decoder_layers_attr_name}")
    match = re.match(rf"^{layers}\.(\d+)\.gated_cross_attn_layer\.(.+)$", key)
    if match:
        return f"lang_encoder.gated_cross_attn_layers.{match[1]}.{match[2]}"
    match = re.match(r"^lang_encoder\.old_decoder_blocks\.(\d+)\.(.+)$", key)
    if not match:
        match = re.match(rf"^{layers}\.(\d+)\.(?!decoder_layer\.)(.+)$", key)
    if match:
        return f"lang_encoder.{decoder_layers_attr_name}.{match[1]}.decoder_layer.{match[2]}"
    for old, new in _RENAMED_BY_TRANSFORMERS_5:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def lands(model: nn.Module, key: str) -> bool:
    """Whether `key` names a parameter, a persistent buffer or the extra state of `model`."""
    *path, leaf = key.split(".")
    module = model
    for name in path:
        module = module._modules.get(name)
        if module is None:  # no such child, or a None entry (a layer without cross-attention)
            return False
    if module._parameters.get(leaf) is not None:
        return True
    if module._buffers.get(leaf) is not None:
        return leaf not in module._non_persistent_buffers_set
    return leaf == "_extra_state" and type(module).set_extra_state is not nn.Module.set_extra_state


def key_targets(model: nn.Module, keys: Iterable[str]) -> dict[str, str | None]:
    """Where each checkpoint key (relative to the Flamingo `model`) loads: the key itself, our
    name for an upstream alias, or None where it lands nowhere."""
    targets = {}
    for key in keys:
        if lands(model, key):
            targets[key] = key
            continue
        alias = upstream_alias_target(key, model.decoder_layers_attr_name)
        targets[key] = alias if alias is not None and lands(model, alias) else None
    return targets


def map_upstream_aliases(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    _metadata,
    _strict,
    _missing,
    unexpected,
    _errs,
) -> None:
    """`load_state_dict` pre-hook of Flamingo: alias keys take our names (our own key wins where
    a file holds both); keys that land nowhere are removed and reported in `unexpected`."""
    keys = [key[len(prefix) :] for key in state_dict if key.startswith(prefix)]
    for key, target in key_targets(module, keys).items():
        if target == key:
            continue
        value = state_dict.pop(prefix + key)
        if target is None:
            unexpected.append(prefix + key)
        else:
            state_dict.setdefault(prefix + target, value)


def _key_of(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.lang_encoder.named_modules():
        if candidate is module:
            return f"lang_encoder.{name}.weight"
    raise ValueError(f"The language model's {type(module).__name__} is not one of its submodules.")


def input_embedding_key(model: nn.Module) -> str:
    """State-dict key of the LM's input embedding, e.g. `lang_encoder.transformer.wte.weight`."""
    return _key_of(model, model.lang_encoder.get_input_embeddings())


def embedding_keys(model: nn.Module) -> list[str]:
    """Keys of the LM's input embedding and, if it has one, its output embedding (the head)."""
    keys = [input_embedding_key(model)]
    head = model.lang_encoder.get_output_embeddings()
    if head is not None:
        keys.append(_key_of(model, head))
    return keys


def required_checkpoint_keys(model: nn.Module) -> list[str]:
    """Keys a Flamingo checkpoint must provide: perceiver, cross-attention, input embedding."""
    keys = [
        k
        for k in model.state_dict()
        if k.startswith("perceiver.") or k.startswith("lang_encoder.gated_cross_attn_layers.")
    ]
    return keys + [input_embedding_key(model)]

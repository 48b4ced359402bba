"""Does a checkpoint fit a Flamingo model? Checked before loading, with the likely cause named.

`load_state_dict(strict=False)` loads whatever matches and leaves the rest at its initial value:
cross-attention blocks of another `cross_attn_every_n_layers`, a perceiver of another vision
width or an embedding of another tokenizer would give an untrained model that runs and scores
zero. `check_checkpoint_fits` refuses such a checkpoint instead.
"""

import re
from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint_keys import embedding_keys, key_targets, required_checkpoint_keys
from .checkpoint_keys import upstream_alias_target as _alias

_BLOCK = re.compile(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.")
_SHOWN = 6  # keys named per problem


class CheckpointMismatchError(ValueError):
    """A checkpoint's Flamingo weights (perceiver, cross-attention, embeddings) do not fit."""


def implied_interval(blocks: set[int]) -> int | None:
    """The `cross_attn_every_n_layers` that puts blocks at exactly `blocks` (up to the last one),
    or None if no interval does. A block sits before decoder layer i when (i + 1) % n == 0."""
    if not blocks:
        return None
    every = min(blocks) + 1
    return every if blocks == set(range(every - 1, max(blocks) + 1, every)) else None


def check_checkpoint_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointMismatchError unless `state_dict` (keys relative to the Flamingo `model`,
    ours or upstream's) holds every perceiver, cross-attention and input-embedding weight of
    `model` with the model's shape, and none that lands nowhere in it."""
    targets = key_targets(model, state_dict)
    embeddings = embedding_keys(model)
    problems = []
    placement = _placement_problem(model, state_dict)
    if placement:  # it explains the missing and stray cross-attention keys
        problems.append(placement)

    loaded = {target for target in targets.values() if target is not None}
    missing = [k for k in required_checkpoint_keys(model) if k not in loaded]
    stray = {k: _canonical(model, k) for k, target in targets.items() if target is None}
    stray = {k: ours for k, ours in stray.items() if _is_flamingo(ours, embeddings)}
    if placement:
        missing = [k for k in missing if not _BLOCK.match(k)]
        stray = {k: ours for k, ours in stray.items() if not _BLOCK.match(ours)}
    if missing:
        problems.append(f"it lacks {len(missing)} Flamingo weight(s): {_some(missing)}")
    if stray:
        problems.append(
            f"{len(stray)} of its Flamingo weight(s) land nowhere: {_some(list(stray))}"
        )

    own = model.state_dict()
    shapes = [
        (target, tuple(state_dict[key].shape), tuple(own[target].shape))
        for key, target in targets.items()
        if target is not None and state_dict[key].shape != own[target].shape
    ]
    if shapes:
        problems.append(_shape_problem(model, shapes, embeddings))
    if problems:
        raise CheckpointMismatchError(
            "The checkpoint does not fit this model:\n" + "\n".join(f"- {p}" for p in problems)
        )


def _canonical(model: nn.Module, key: str) -> str:
    return _alias(key, model.decoder_layers_attr_name) or key


def _is_flamingo(key: str, embeddings: list[str]) -> bool:
    return key.startswith("perceiver.") or bool(_BLOCK.match(key)) or key in embeddings


def _some(items: list[str], separator: str = ", ") -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return separator.join(items[:_SHOWN]) + more


def _layers(blocks: set[int]) -> str:
    ordered = sorted(blocks)
    if len(ordered) <= _SHOWN:
        return ", ".join(map(str, ordered))
    return f"{ordered[0]}, {ordered[1]}, {ordered[2]}, ..., {ordered[-1]}"


def _placement_problem(model: nn.Module, state_dict: Mapping) -> str | None:
    """Why the checkpoint's cross-attention blocks sit before other decoder layers than ours."""
    blocks = model.lang_encoder.gated_cross_attn_layers
    ours = {i for i, block in enumerate(blocks) if block is not None}
    theirs = {int(m[1]) for k in state_dict if (m := _BLOCK.match(_canonical(model, k)))}
    if theirs == ours:
        return None
    if not theirs:
        return (
            "it has no gated cross-attention weights (lang_encoder.gated_cross_attn_layers.N.* "
            f"or lang_encoder.{model.decoder_layers_attr_name}.N.gated_cross_attn_layer.*): is it "
            "an OpenFlamingo checkpoint?"
        )
    every = implied_interval(theirs)
    text = (
        f"its gated cross-attention blocks sit before decoder layers {_layers(theirs)} ("
        + (f"cross_attn_every_n_layers={every}" if every else "no single interval")
        + f"); this model's sit before layers {_layers(ours)} (cross_attn_every_n_layers="
        f"{model.cross_attn_every_n_layers}, {len(blocks)} decoder layers)."
    )
    if every is None:
        return f"{text} Is it a checkpoint of this architecture?"
    if every != model.cross_attn_every_n_layers:
        return (
            f"{text} Build the model with cross_attn_every_n_layers={every} "
            f"(--cross_attn_every_n_layers {every})."
        )
    return f"{text} The layer counts differ: is it a checkpoint of another language model?"


def _shape_problem(model: nn.Module, shapes: list[tuple[str, tuple, tuple]], embeddings) -> str:
    """The mismatched shapes (our key, checkpoint shape, model shape), with what each kind of
    weight's shape depends on."""
    shown = [f"{key}: {theirs} there, {ours} here" for key, theirs, ours in shapes]
    keys = [key for key, _, _ in shapes]
    causes = []
    if any(k.startswith("perceiver.") or k.endswith(".attn.to_kv.weight") for k in keys):
        causes.append(
            "The perceiver and the cross-attention keys are as wide as the vision encoder's "
            f"tokens (vis_dim {model.vis_dim} here): was it trained with another vision encoder?"
        )
    if any(_BLOCK.match(k) and not k.endswith(".attn.to_kv.weight") for k in keys):
        causes.append(
            f"Cross-attention is as wide as the language model (hidden size {model.lang_dim} "
            "here): was it trained with another language model?"
        )
    if any(k in embeddings for k in keys):
        causes.append(
            "An embedding has one row per token: was it trained with another tokenizer? Use the "
            "tokenizer it was trained with (Flamingo adds <|endofchunk|>, <image> and, where the "
            "tokenizer has no pad token, <PAD> to it)."
        )
    if not causes:
        causes.append("Was it trained with another language model?")
    return f"{len(shapes)} shape(s) differ ({_some(shown, '; ')}). " + " ".join(causes)

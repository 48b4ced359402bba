"""How gated cross-attention is inserted into a Hugging Face decoder.

The LM stays the Hugging Face model it was loaded as (no `__class__` swapping). Two explicit
changes are made to it:

* `lang_encoder.gated_cross_attn_layers`: a ModuleList with a GatedCrossAttentionBlock at every
  decoder index i where (i + 1) % cross_attn_every_n_layers == 0, None elsewhere. This is the only
  place these blocks are registered, so checkpoints hold each weight once, under the released
  key `lang_encoder.gated_cross_attn_layers.{i}.*`.
* each entry of the decoder-layer list is replaced by a `FlamingoDecoderLayer` that holds the
  original layer as `.decoder_layer` and runs block i (if any) before it.

What the blocks attend to reaches them through one `MediaBinding` per model: the `Flamingo`
entry points open a `MediaSession` on it for their duration, and at the start of every LM call
(each step inside `generate` included) the binding computes that call's immutable
`MediaContext` from the call's token ids; it is dropped when the call returns.
"""

import torch
from torch import nn

from .helpers import GatedCrossAttentionBlock
from .lm_registry import get_submodule_by_path
from .media import MediaContext, MediaSession
from .recompute import checkpointed

# the KV-cache argument: transformers >= 5.24, earlier 5.x, and decoder layers of some families
CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


class MediaBinding:
    """Hands each LM call's `MediaContext` to the gated cross-attention layers.

    Not a module: it holds no weights. `blocks` is the ModuleList registered on the LM as
    `gated_cross_attn_layers`; each `FlamingoDecoderLayer` runs `blocks[its index]`.

    The LM's token ids reach no decoder layer, and transformers' `generate` calls the LM itself
    at every step, so the context is computed where the ids enter: `enter_lm_call`, a forward
    pre-hook on the LM, and dropped by `exit_lm_call`, a forward hook that runs even when the
    call raises. transformers passes no extra argument to the decoder layers of every family
    (MPT's and GPT-Neo's take a fixed set), hence this binding instead of an argument.
    """

    def __init__(self, blocks: nn.ModuleList):
        self.blocks = blocks
        self.session: MediaSession | None = None  # set and cleared by Flamingo's entry points
        self.context: MediaContext | None = None  # the current LM call's

    def enter_lm_call(self, lang_encoder: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self.session is None:
            raise RuntimeError(
                "The Flamingo language model was called without visual conditioning. Call "
                "Flamingo.forward / generate, or Flamingo.cache_media before using lang_encoder."
            )
        if input_ids is None:
            raise ValueError(
                "Flamingo's language model needs input_ids to find the <image> tokens; "
                "inputs_embeds alone are not supported."
            )
        self.context = self.session.context_for(input_ids, self.blocks)

    def exit_lm_call(self, lang_encoder: nn.Module, args: tuple, output) -> None:
        self.context = None


class FlamingoDecoderLayer(nn.Module):
    """A decoder layer preceded by gated cross-attention block `index` of `media.blocks`, if
    there is one there.

    The block is registered only under `lang_encoder.gated_cross_attn_layers`; this layer finds
    it through the binding. Calls pass through to the decoder layer with the same arguments and
    return value, whatever the LM family.
    """

    def __init__(self, decoder_layer: nn.Module, index: int, media: MediaBinding):
        super().__init__()
        self.decoder_layer = decoder_layer
        self.index = index
        self.media = media
        self.gradient_checkpointing: str | None = None  # None, "full" or "selective"

    @property
    def gated_cross_attn_layer(self) -> GatedCrossAttentionBlock | None:
        return self.media.blocks[self.index]

    def _forward(self, hidden_states, latents, text_time, keys_values, *args, **kwargs):
        block = self.gated_cross_attn_layer
        if block is not None and latents is not None:  # None: a text-only call, LM as it is
            # where the block sits: its decoder layer's device when the LM is dispatched over
            # several (placement.py); these moves are no-ops on one device
            device = block.attn_gate.device
            hidden_states = block(
                hidden_states.to(device), latents.to(device), text_time.to(device), keys_values
            )
        return self.decoder_layer(hidden_states, *args, **kwargs)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        """hidden_states: (B, L, D); other arguments are the decoder layer's own."""
        context = self.media.context
        if context is None:
            raise RuntimeError(
                "FlamingoDecoderLayer called without visual conditioning; go through "
                "Flamingo.forward / generate / cache_media."
            )
        keys_values = None if context.keys_values is None else context.keys_values[self.index]
        media = (context.latents, context.text_time, keys_values)
        uses_cache = any(kwargs.get(name) is not None for name in CACHE_KWARGS)
        if (
            self.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and not uses_cache
        ):
            # The media are explicit inputs, so the recomputation in backward sees the same
            # conditioning even after the LM call has returned.
            return checkpointed(
                self.gradient_checkpointing, self._forward, hidden_states, *media, *args, **kwargs
            )
        return self._forward(hidden_states, *media, *args, **kwargs)


def insert_gated_cross_attention(
    lang_encoder: nn.Module,
    *,
    decoder_layers_attr_name: str,
    lang_dim: int,
    vis_dim: int,
    cross_attn_every_n_layers: int,
) -> MediaBinding:
    """Add `gated_cross_attn_layers` to `lang_encoder`, wrap its decoder layers and hook its
    calls to their binding (in place). Returns the binding."""
    if cross_attn_every_n_layers < 1:
        raise ValueError(f"cross_attn_every_n_layers must be >= 1, got {cross_attn_every_n_layers}")
    decoder_layers = get_submodule_by_path(lang_encoder, decoder_layers_attr_name)
    if not isinstance(decoder_layers, nn.ModuleList):
        raise ValueError(
            f"{decoder_layers_attr_name!r} is a {type(decoder_layers).__name__}, not the "
            "ModuleList of decoder layers; check decoder_layers_attr_name."
        )
    if any(isinstance(layer, FlamingoDecoderLayer) for layer in decoder_layers):
        raise ValueError("This language model already has Flamingo cross-attention layers.")
    if cross_attn_every_n_layers > len(decoder_layers):
        raise ValueError(
            f"cross_attn_every_n_layers {cross_attn_every_n_layers} exceeds the "
            f"{len(decoder_layers)} decoder layers of the language model: no cross-attention "
            "layer would see the images"
        )

    lang_encoder.gated_cross_attn_layers = nn.ModuleList(
        GatedCrossAttentionBlock(dim=lang_dim, dim_visual=vis_dim)
        if (layer_idx + 1) % cross_attn_every_n_layers == 0
        else None
        for layer_idx in range(len(decoder_layers))
    )
    media = MediaBinding(lang_encoder.gated_cross_attn_layers)
    for index, decoder_layer in enumerate(list(decoder_layers)):
        decoder_layers[index] = FlamingoDecoderLayer(decoder_layer, index, media)
    lang_encoder.register_forward_pre_hook(media.enter_lm_call, with_kwargs=True)
    lang_encoder.register_forward_hook(media.exit_lm_call, always_call=True)
    return media

"""How gated cross-attention is inserted into a Hugging Face decoder.

The LM stays the Hugging Face model it was loaded as (no `__class__` swapping). Two explicit
changes are made to it:

* `lang_encoder.gated_cross_attn_layers`: a ModuleList with a GatedCrossAttentionBlock at every
  decoder index i where (i + 1) % cross_attn_every_n_layers == 0, None elsewhere. This is the only
  place these blocks are registered, so checkpoints hold each weight once, under the released
  key `lang_encoder.gated_cross_attn_layers.{i}.*`.
* each entry of the decoder-layer list is replaced by a `FlamingoDecoderLayer` that holds the
  original layer as `.decoder_layer` and runs the cross-attention block (if any) before it.

What the blocks attend to lives in one `MediaConditioning` object per model, set by
`Flamingo.forward` / `generate` / `cache_media` and cleared by them.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .helpers import GatedCrossAttentionBlock
from .lm_registry import get_submodule_by_path
from .recompute import checkpointed

# the KV-cache argument: transformers >= 5.24, earlier 5.x, and decoder layers of some families
CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


@dataclass
class MediaConditioning:
    """The visual context of one forward / generate call.

    latents: (B, T, n, Dv) perceiver output, or None when not conditioned.
    image_count: (B,) long, in cached mode: how many `<image>` tokens the last input that had
        any held per row (None: no such input yet, i.e. 0).
    text_time: (B, L) long, for the current LM input: index (1-based) of the image each token
        follows, 0 before the first image.
    use_cached_locations: generation / cache_media mode. Then an input without `<image>` tokens
        (a decoding step) follows the last image of the conditioned prompt, as upstream does.
    media_kv: in that mode and without autograd, each cross-attention layer's keys and values
        of `latents`, computed at the first call and reused by every decoding step.
    count_buffer: where `image_count` lives during generation, kept across calls: a fixed
        address, as transformers keeps its static KV cache, so that a CUDA graph of the
        decoding step neither copies it nor is re-recorded for each `generate` call.
    """

    media_token_id: int
    latents: torch.Tensor | None = None
    image_count: torch.Tensor | None = None
    text_time: torch.Tensor | None = None
    use_cached_locations: bool = False
    media_kv: dict = field(default_factory=dict)
    count_buffer: torch.Tensor | None = field(default=None, repr=False)

    @property
    def is_conditioned(self) -> bool:
        return self.latents is not None

    def clear(self) -> None:
        self.latents = None
        self.image_count = None
        self.text_time = None
        self.use_cached_locations = False
        self.media_kv = {}

    def media_kv_cache(self) -> dict | None:
        """Where cross-attention may keep the media's keys and values, or None (training)."""
        if self.use_cached_locations and not torch.is_grad_enabled():
            return self.media_kv
        return None

    def pre_forward_hook(self, lang_encoder: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the LM: every call, generate's steps included, locates media."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError(
                "Flamingo's language model needs input_ids to find the <image> tokens; "
                "inputs_embeds alone are not supported."
            )
        self.locate_media(input_ids)

    def locate_media(self, input_ids: torch.Tensor) -> None:
        """Compute `text_time` for the LM input `input_ids` (B, L)."""
        if self.latents is None:
            raise RuntimeError(
                "The Flamingo language model was called without visual conditioning. Call "
                "Flamingo.forward / generate, or Flamingo.cache_media before using lang_encoder."
            )
        self._match_batch(input_ids.shape[0])
        text_time = (input_ids == self.media_token_id).cumsum(dim=-1)  # (B, L)
        if not self.use_cached_locations:
            self.text_time = text_time
            return
        # Upstream: if no row of the input has an <image> (a decoding step, or text scored
        # against cached media), every token follows the last image of the conditioned prompt;
        # otherwise the input's own images count. Written without a Python branch on the data,
        # so that a compiled decoding step is one graph with no device-to-host sync.
        if self.image_count is None:
            self.image_count = self._zeroed_count_buffer(text_time[:, 0])
        elif not torch.compiler.is_compiling() and self._read_only(self.image_count):
            self.image_count = self.image_count.clone()  # cache_media ran under inference_mode
        any_image = text_time[:, -1].any()  # () over the whole batch, as upstream
        self.text_time = torch.where(any_image, text_time, self.image_count[:, None])
        self.image_count.copy_(torch.where(any_image, text_time[:, -1], self.image_count))

    @staticmethod
    def _read_only(tensor: torch.Tensor) -> bool:
        """An inference tensor cannot be written outside `torch.inference_mode`."""
        return tensor.is_inference() and not torch.is_inference_mode_enabled()

    def _zeroed_count_buffer(self, like: torch.Tensor) -> torch.Tensor:
        """`count_buffer` zeroed in place; (re)allocated when the batch or device changes, or
        when it was made under `torch.inference_mode` and this call is not (it is then read-only).
        """
        buffer = self.count_buffer
        if (
            buffer is None
            or buffer.shape != like.shape
            or buffer.device != like.device
            or self._read_only(buffer)
        ):
            buffer = self.count_buffer = torch.zeros_like(like)
            torch._dynamo.mark_static_address(buffer)
        return buffer.zero_()

    def _match_batch(self, batch_size: int) -> None:
        """Repeat the media per row when generate expanded the batch (beams, return sequences)."""
        have = self.latents.shape[0]
        if have == batch_size:
            return
        if batch_size % have:
            raise ValueError(
                f"Language input has batch size {batch_size} but {have} media rows were encoded."
            )
        repeats = batch_size // have
        self.latents = self.latents.repeat_interleave(repeats, dim=0)
        if self.image_count is not None and self.image_count.shape[0] == have:
            self.image_count = self.image_count.repeat_interleave(repeats, dim=0)


class FlamingoDecoderLayer(nn.Module):
    """A decoder layer preceded by (optionally) a gated cross-attention block.

    `gated_cross_attn_layer` is a plain reference: the block is registered only under
    `lang_encoder.gated_cross_attn_layers`. Calls pass through to the decoder layer with the
    same arguments and return value, whatever the LM family.
    """

    def __init__(
        self,
        decoder_layer: nn.Module,
        gated_cross_attn_layer: GatedCrossAttentionBlock | None,
        conditioning: MediaConditioning,
    ):
        super().__init__()
        self.decoder_layer = decoder_layer
        object.__setattr__(self, "gated_cross_attn_layer", gated_cross_attn_layer)
        object.__setattr__(self, "conditioning", conditioning)
        self.gradient_checkpointing: str | None = None  # None, "full" or "selective"

    def _forward(self, hidden_states, latents, text_time, *args, **kwargs):
        if self.gated_cross_attn_layer is not None:
            hidden_states = self.gated_cross_attn_layer(
                hidden_states, latents, text_time, self.conditioning.media_kv_cache()
            )
        return self.decoder_layer(hidden_states, *args, **kwargs)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        """hidden_states: (B, L, D); other arguments are the decoder layer's own."""
        cond = self.conditioning
        if cond.latents is None or cond.text_time is None:
            raise RuntimeError(
                "FlamingoDecoderLayer called without visual conditioning; go through "
                "Flamingo.forward / generate / cache_media."
            )
        uses_cache = any(kwargs.get(name) is not None for name in CACHE_KWARGS)
        if (
            self.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and not uses_cache
        ):
            # The media are explicit inputs, so the recomputation in backward sees the same
            # conditioning even after the forward call has cleared it.
            return checkpointed(
                self.gradient_checkpointing,
                self._forward,
                hidden_states,
                cond.latents,
                cond.text_time,
                *args,
                **kwargs,
            )
        return self._forward(hidden_states, cond.latents, cond.text_time, *args, **kwargs)


def insert_gated_cross_attention(
    lang_encoder: nn.Module,
    *,
    decoder_layers_attr_name: str,
    conditioning: MediaConditioning,
    lang_dim: int,
    vis_dim: int,
    cross_attn_every_n_layers: int,
) -> nn.ModuleList:
    """Add `gated_cross_attn_layers` to `lang_encoder` and wrap its decoder layers (in place).

    Returns the new wrappers (a view of the LM's decoder-layer list).
    """
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
    for idx, (decoder_layer, xattn) in enumerate(
        zip(list(decoder_layers), lang_encoder.gated_cross_attn_layers, strict=True)
    ):
        decoder_layers[idx] = FlamingoDecoderLayer(decoder_layer, xattn, conditioning)
    return decoder_layers

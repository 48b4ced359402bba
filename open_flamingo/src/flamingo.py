"""Flamingo: a frozen vision encoder and a frozen causal LM joined by a Perceiver resampler and
gated cross-attention (Alayrac et al. 2022), with OpenFlamingo 2.0's interface and numerics.

Shapes: B batch, T images per sample, F frames (1), C/H/W image, L text tokens, n latents.
"""

import inspect

import torch
from torch import nn

from .checkpoint import map_upstream_aliases
from .decoding import reorder_cache_in_place
from .flamingo_lm import FlamingoDecoderLayer, MediaConditioning, insert_gated_cross_attention
from .helpers import PerceiverResampler
from .lm_registry import infer_decoder_layers_attr_name, lm_hidden_size
from .recompute import normalize_policy


class Flamingo(nn.Module):
    """OpenFlamingo model.

    Args:
        vision_encoder: an open_clip visual tower (`clip_model.visual`). It is switched to return
            its patch tokens (`output_tokens = True`).
        lang_encoder: a Hugging Face causal LM. Gated cross-attention is inserted into it in place.
        eoc_token_id: id of `<|endofchunk|>` (the default end of generation).
        media_token_id: id of `<image>`.
        vis_dim: width of the vision tokens (open_clip `vision_cfg.width`, 1024 for ViT-L-14).
        cross_attn_every_n_layers: a block before decoder layer i when (i + 1) % n == 0.
        gradient_checkpointing: recompute perceiver and (cross-attention + decoder) layers in
            backward instead of storing their activations: True / "full", or "selective"
            (only elementwise ops are recomputed).
        decoder_layers_attr_name: dotted path of the LM's decoder-layer list; inferred from the
            LM's model type when None.
    """

    def __init__(
        self,
        vision_encoder: nn.Module,
        lang_encoder: nn.Module,
        eoc_token_id: int,
        media_token_id: int,
        vis_dim: int,
        cross_attn_every_n_layers: int = 1,
        gradient_checkpointing: bool | str = False,
        decoder_layers_attr_name: str | None = None,
    ):
        super().__init__()
        self.eoc_token_id = eoc_token_id
        self.media_token_id = media_token_id
        self.vis_dim = vis_dim
        self.lang_dim = lm_hidden_size(lang_encoder.config)
        self.cross_attn_every_n_layers = cross_attn_every_n_layers
        self.decoder_layers_attr_name = decoder_layers_attr_name or infer_decoder_layers_attr_name(
            lang_encoder
        )

        if hasattr(vision_encoder, "output_tokens"):
            vision_encoder.output_tokens = True
        self.vision_encoder = vision_encoder
        self.perceiver = PerceiverResampler(dim=vis_dim)
        self.lang_encoder = lang_encoder

        # Not a module: per-call state shared by the decoder-layer wrappers and the LM hook.
        self._conditioning = MediaConditioning(media_token_id)
        insert_gated_cross_attention(
            lang_encoder,
            decoder_layers_attr_name=self.decoder_layers_attr_name,
            conditioning=self._conditioning,
            lang_dim=self.lang_dim,
            vis_dim=vis_dim,
            cross_attn_every_n_layers=cross_attn_every_n_layers,
        )
        # Every LM call (including each step inside generate) locates <image> in its input_ids.
        lang_encoder.register_forward_pre_hook(
            self._conditioning.pre_forward_hook, with_kwargs=True
        )
        # Beam search keeps a static KV cache's buffers in place (CUDA graphs; decoding.py).
        lang_encoder._reorder_cache = reorder_cache_in_place
        # transformers >= 5.24 names the KV cache argument `cache`; earlier 5.x `past_key_values`.
        forward_params = inspect.signature(lang_encoder.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self.register_load_state_dict_pre_hook(map_upstream_aliases)
        self.set_gradient_checkpointing(gradient_checkpointing)

    # ------------------------------------------------------------------ public API
    def forward(
        self,
        vision_x: torch.Tensor | None,
        lang_x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        clear_conditioned_layers: bool = True,
        past_key_values=None,
        use_cache: bool = False,
    ):
        """Run the LM on `lang_x` conditioned on `vision_x`.

        Args:
            vision_x: (B, T_img, F, C, H, W) images, F = 1; None after `cache_media`.
            lang_x: (B, L) token ids containing one `<image>` per image.
            attention_mask: (B, L), 1 for real tokens.
            labels: (B, L) targets (-100 = ignored); the LM shifts them.
            clear_conditioned_layers: drop the visual conditioning after the call. Pass False to
                keep it for further calls (e.g. scoring continuations with a KV cache).
            past_key_values: a transformers Cache (or legacy tuple) to continue from.
            use_cache: return the KV cache.

        Returns:
            The LM's `CausalLMOutputWithPast` (logits (B, L, vocab), loss if labels given).
        """
        cond = self._conditioning
        if cond.use_cached_locations:
            if vision_x is not None:
                raise ValueError(
                    "Media are cached (cache_media was called): pass vision_x=None, or call "
                    "uncache_media() first."
                )
        elif vision_x is None:
            raise ValueError("Pass vision_x, or cache media first with cache_media().")
        else:
            cond.latents = self._encode_vision_x(vision_x)
        lm_kwargs = {"input_ids": lang_x, "attention_mask": attention_mask, "labels": labels}
        if past_key_values is not None:
            lm_kwargs[self._cache_kwarg] = past_key_values
        try:
            return self.lang_encoder(**lm_kwargs, use_cache=use_cache)
        finally:
            if clear_conditioned_layers:
                cond.clear()

    @torch.no_grad()
    def generate(
        self,
        vision_x: torch.Tensor,
        lang_x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Generate text conditioned on images; returns prompt + new tokens (B * n_ret, L + new).

        Args:
            vision_x: (B, T_img, F, C, H, W) images, encoded once for the whole call.
            lang_x: (B, L) prompt ids (left-pad batched prompts).
            attention_mask: (B, L).
            **kwargs: Hugging Face `generate` arguments (num_beams, max_new_tokens, do_sample,
                ...). `eos_token_id` defaults to the `<|endofchunk|>` id. `use_cache` defaults
                to True whatever the LM's config says: MPT configs ship `use_cache=False`, with
                which every new token would re-run the whole prompt (same tokens, ~L x the work).
        """
        kwargs.setdefault("eos_token_id", self.eoc_token_id)
        kwargs.setdefault("use_cache", True)
        cond = self._conditioning
        cond.latents = self._encode_vision_x(vision_x)
        cond.image_count = None
        cond.use_cached_locations = True
        try:
            return self.lang_encoder.generate(
                input_ids=lang_x, attention_mask=attention_mask, **kwargs
            )
        finally:
            cond.clear()

    def cache_media(self, input_ids: torch.Tensor, vision_x: torch.Tensor) -> None:
        """Encode `vision_x` once and condition on `input_ids`'s `<image>` positions.

        Later `forward(vision_x=None, ...)` calls reuse them; inputs without `<image>` tokens
        attend to the last image of `input_ids` (used for log-likelihood scoring).
        """
        cond = self._conditioning
        cond.latents = self._encode_vision_x(vision_x)
        cond.image_count = (input_ids == self.media_token_id).sum(dim=1)
        cond.use_cached_locations = True

    def uncache_media(self) -> None:
        """Drop media cached by `cache_media`."""
        self._conditioning.clear()

    def set_gradient_checkpointing(self, enable: bool | str = True) -> None:
        """Recompute perceiver layers and (cross-attention + decoder) layers in backward.

        enable: True or "full" (recompute whole layers), "selective" (keep matmul and attention
        outputs, recompute the elementwise rest; open_flamingo/src/recompute.py), False: off.
        """
        policy = normalize_policy(enable)
        self.perceiver.gradient_checkpointing = policy
        for module in self.lang_encoder.modules():
            if isinstance(module, FlamingoDecoderLayer):
                module.gradient_checkpointing = policy

    # ------------------------------------------------------------------ internals
    def _encode_vision_x(self, vision_x: torch.Tensor) -> torch.Tensor:
        """(B, T, F, C, H, W) images -> (B, T, n, Dv) perceiver latents (vision encoder frozen)."""
        if vision_x.ndim != 6:
            raise ValueError(
                f"vision_x must have shape (B, T_img, F, C, H, W), got {tuple(vision_x.shape)}"
            )
        b, t, f = vision_x.shape[:3]
        if f != 1:
            raise ValueError(f"Only single-frame media are supported (F == 1), got F = {f}")
        images = vision_x.flatten(0, 2)  # (B*T*F, C, H, W)
        encoder_param = next(self.vision_encoder.parameters(), None)
        if encoder_param is not None:
            images = images.to(device=encoder_param.device, dtype=encoder_param.dtype)
        with torch.no_grad():
            encoded = self.vision_encoder(images)
        if not isinstance(encoded, tuple):
            raise TypeError(
                "The vision encoder must return (pooled, patch_tokens); set output_tokens=True "
                "on the open_clip visual tower."
            )
        tokens = encoded[1]  # (B*T*F, v, Dv)
        tokens = tokens.reshape(b, t, f, *tokens.shape[1:]).to(self.perceiver.latents.dtype)
        return self.perceiver(tokens)  # (B, T, n, Dv)

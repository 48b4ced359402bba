"""Flamingo: a frozen vision encoder and a frozen causal LM joined by a Perceiver resampler and
gated cross-attention (Alayrac et al. 2022), with OpenFlamingo 2.0's interface and numerics.

Shapes: B batch, T images per sample, F frames (1), C/H/W image, L text tokens, n latents.
"""

import inspect

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from .checkpoint_keys import map_upstream_aliases
from .decoding import reorder_cache_in_place
from .flamingo_folder import FlamingoFolderMixin
from .flamingo_lm import FlamingoDecoderLayer, insert_gated_cross_attention
from .helpers import PerceiverResampler
from .lm_registry import infer_decoder_layers_attr_name, lm_hidden_size
from .media import TEXT_ONLY, ImageCountBuffer, MediaSession
from .mpt_attention import SdpaMptAttention
from .recompute import normalize_policy


def _holds_data(tensor: torch.Tensor) -> bool:
    """False for meta and fake tensors (FLOP counting, memory estimates): shapes, no values."""
    return not (tensor.is_meta or isinstance(tensor, FakeTensor))


class Flamingo(FlamingoFolderMixin, nn.Module):
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

        # Not a module: hands each LM call (generate's steps included) its MediaContext.
        self._media = insert_gated_cross_attention(
            lang_encoder,
            decoder_layers_attr_name=self.decoder_layers_attr_name,
            lang_dim=self.lang_dim,
            vis_dim=vis_dim,
            cross_attn_every_n_layers=cross_attn_every_n_layers,
        )
        self._image_counts = ImageCountBuffer()  # where generate's decoding steps count images
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
            vision_x: (B, T_img, F, C, H, W) images, F = 1; None after `cache_media`. Row b
                holds the images of text row b, in order; a row may have more images than
                `<image>` tokens (padding), never fewer. None without cached media: text-only
                input (no `<image>` token), run as the plain LM, the gated blocks skipped.
            lang_x: (B, L) token ids containing one `<image>` per image.
            attention_mask: (B, L), 1 for real tokens.
            labels: (B, L) targets (-100 = ignored); the LM shifts them.
            clear_conditioned_layers: drop the visual conditioning after the call. Pass False to
                keep it for further calls (e.g. scoring continuations with a KV cache).
            past_key_values: a transformers Cache (or legacy tuple) to continue from.
            use_cache: return the KV cache.

        Returns:
            The LM's `CausalLMOutputWithPast` (logits (B, L, vocab), loss if labels given).

        Raises:
            ValueError: vision_x is not one row of images per text row, or a row has more
                `<image>` tokens than images.
        """
        session = self._cached_media
        if session is not None:
            if vision_x is not None:
                raise ValueError(
                    "Media are cached (cache_media was called): pass vision_x=None, or call "
                    "uncache_media() first."
                )
            self._check_image_tokens(lang_x, session.num_media, "the media cached by cache_media")
        elif vision_x is None:  # text only (a mixture's text batch): the plain LM
            if _holds_data(lang_x) and bool((lang_x == self.media_token_id).any()):
                raise ValueError(
                    "Pass vision_x, or cache media first with cache_media(): the text holds "
                    "<image> tokens. Only text without them runs with vision_x=None (as the "
                    "plain LM)."
                )
            session = TEXT_ONLY
        else:
            self._check_media_inputs(vision_x, lang_x)
            session = MediaSession(self._encode_vision_x(vision_x), self.media_token_id)
        lm_kwargs = {"input_ids": lang_x, "attention_mask": attention_mask, "labels": labels}
        if past_key_values is not None:
            lm_kwargs[self._cache_kwarg] = past_key_values
        self._media.session = session
        try:
            return self.lang_encoder(**lm_kwargs, use_cache=use_cache)
        finally:
            if clear_conditioned_layers:  # cached media included, as upstream
                self._media.session = None

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
            vision_x: (B, T_img, F, C, H, W) images, encoded once for the whole call: one row
                per prompt (they are repeated per beam and returned sequence here).
            lang_x: (B, L) prompt ids (left-pad batched prompts).
            attention_mask: (B, L).
            **kwargs: Hugging Face `generate` arguments (num_beams, max_new_tokens, do_sample,
                ...). `eos_token_id` defaults to the `<|endofchunk|>` id. `use_cache` defaults
                to True whatever the LM's config says: MPT configs ship `use_cache=False`, with
                which every new token would re-run the whole prompt (same tokens, ~L x the work).
        """
        kwargs.setdefault("eos_token_id", self.eoc_token_id)
        kwargs.setdefault("use_cache", True)
        self._check_media_inputs(vision_x, lang_x, generating=True)
        # Decoding steps hold no <image> token: they follow the prompt's last image (upstream).
        session = MediaSession(
            self._encode_vision_x(vision_x),
            self.media_token_id,
            follows_last_image=True,
            count_buffer=self._image_counts,
        )
        self._media.session = session
        try:
            return self.lang_encoder.generate(
                input_ids=lang_x, attention_mask=attention_mask, **kwargs
            )
        finally:
            self._media.session = None  # cache_media's media included, as upstream

    def cache_media(self, input_ids: torch.Tensor, vision_x: torch.Tensor) -> None:
        """Encode `vision_x` once and condition on `input_ids`'s `<image>` positions.

        Later `forward(vision_x=None, ...)` calls reuse them; inputs without `<image>` tokens
        attend to the last image of `input_ids` (used for log-likelihood scoring). A later input
        of k * B rows pairs each media row with k consecutive text rows.
        """
        self._check_media_inputs(vision_x, input_ids)
        self._media.session = MediaSession(
            self._encode_vision_x(vision_x),
            self.media_token_id,
            follows_last_image=True,
            image_count=(input_ids == self.media_token_id).sum(dim=1),
        )

    def uncache_media(self) -> None:
        """Drop media cached by `cache_media`."""
        self._media.session = None

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
            elif isinstance(module, SdpaMptAttention):
                module.recomputed_in_backward = policy is not None

    # ------------------------------------------------------------------ internals
    @property
    def _cached_media(self) -> MediaSession | None:
        """The session `cache_media` opened, while it lasts."""
        session = self._media.session
        return session if session is not None and session.follows_last_image else None

    def _check_media_inputs(
        self, vision_x: torch.Tensor, lang_x: torch.Tensor, generating: bool = False
    ) -> None:
        """Raise ValueError unless vision_x (B, T_img, 1, C, H, W) gives every row of lang_x
        (B, L) an image for each of its `<image>` tokens.

        More images than `<image>` tokens is fine (rows padded to the longest). Counting the
        tokens reads one number back from the device: once per call, never per decoding step.
        """
        if vision_x.ndim != 6:
            raise ValueError(
                f"vision_x must have shape (B, T_img, F, C, H, W), got {tuple(vision_x.shape)}"
            )
        if vision_x.shape[2] != 1:
            raise ValueError(
                f"Only single-frame media are supported (F == 1), got F = {vision_x.shape[2]}"
            )
        if vision_x.shape[0] != lang_x.shape[0]:
            beams = " (generate repeats them per beam and returned sequence)" if generating else ""
            raise ValueError(
                f"vision_x has {vision_x.shape[0]} rows of images but lang_x has "
                f"{lang_x.shape[0]} rows of text: give one row of images per text row, in the "
                f"same order{beams}."
            )
        self._check_image_tokens(lang_x, vision_x.shape[1], "vision_x")

    def _check_image_tokens(self, lang_x: torch.Tensor, num_media: int, source: str) -> None:
        """Raise ValueError if a row of lang_x (B, L) has more `<image>` tokens than the
        `num_media` images per row of `source`."""
        if torch.compiler.is_compiling() or lang_x.numel() == 0 or not _holds_data(lang_x):
            return  # a data-dependent check: eager calls on real tensors only
        counts = (lang_x == self.media_token_id).sum(dim=1)  # (B,)
        most = int(counts.max())  # the device-to-host sync
        if most > num_media:
            rows = (counts > num_media).nonzero().flatten().tolist()
            raise ValueError(
                f"Row(s) {rows} of the text hold up to {most} <image> tokens, but {source} has "
                f"{num_media} image(s) per row (T_img): each <image> token needs an image. Give "
                f"vision_x at least {most} images per row (pad rows with fewer, e.g. with zeros: "
                "an image after a row's last <image> token is never attended), or remove the "
                "extra <image> tokens."
            )

    def _encode_vision_x(self, vision_x: torch.Tensor) -> torch.Tensor:
        """(B, T, F, C, H, W) images -> (B, T, n, Dv) perceiver latents (vision encoder frozen);
        shapes checked by `_check_media_inputs`."""
        b, t, f = vision_x.shape[:3]
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

"""Flamingo's trainable blocks: the Perceiver resampler and gated cross-attention.

Numerics follow open-flamingo 2.0.x exactly (see docs/architecture.md); attention runs through
`torch.nn.functional.scaled_dot_product_attention`. Module and parameter names are those of the
released checkpoints, so `perceiver.layers.{i}.0.to_q.weight` etc. load unchanged.

Shapes: B batch, T images per sample, F frames per image (always 1), v patch tokens, n latents,
L text tokens, h heads, d head dim.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .recompute import checkpointed


def FeedForward(dim: int, mult: int = 4) -> nn.Sequential:
    """Pre-norm MLP. Indices 0, 1, 3 hold the weights (`ff.0`, `ff.1`, `ff.3` in checkpoints)."""
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., N, h*d) -> (..., h, N, d)"""
    *lead, n, hd = x.shape
    return x.view(*lead, n, heads, hd // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., h, N, d) -> (..., N, h*d)"""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


class PerceiverAttention(nn.Module):
    """Latents attend to [media ; latents]."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner_dim = dim_head * heads

        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (B, T, v, D) media features; latents: (B, T, n, D). Returns (B, T, n, D)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = _split_heads(self.to_q(latents), self.heads)  # (B, T, h, n, d)
        kv_input = torch.cat((x, latents), dim=-2)  # (B, T, v+n, D)
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(kv_input).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, T, h, n, d)
        return self.to_out(_merge_heads(out))


class PerceiverResampler(nn.Module):
    """Resamples each image's v patch tokens to `num_latents` latent vectors."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 6,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 64,
        max_num_media: int | None = None,
        max_num_frames: int | None = None,
        ff_mult: int = 4,
    ):
        super().__init__()
        # Parameter creation order matches upstream, so a seeded init draws the same numbers.
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = (
            nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames is not None else None
        )
        self.media_time_embs = (
            nn.Parameter(torch.randn(max_num_media, 1, dim)) if max_num_media is not None else None
        )
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads),
                    FeedForward(dim=dim, mult=ff_mult),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing: str | None = None  # None, "full" or "selective"

    def _block(self, attn: nn.Module, ff: nn.Module, x: torch.Tensor, latents: torch.Tensor):
        latents = attn(x, latents) + latents
        return ff(latents) + latents

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F, v, D) visual features. Returns (B, T, n, D)."""
        b, t, f, v = x.shape[:4]
        if self.frame_embs is not None:
            x = x + self.frame_embs[:f].view(1, 1, f, 1, -1)
        x = x.reshape(b, t, f * v, x.shape[-1])  # (B, T, F*v, D)
        if self.media_time_embs is not None:
            x = x + self.media_time_embs[:t]
        latents = self.latents.expand(b, t, *self.latents.shape)  # (B, T, n, D)
        policy = self.gradient_checkpointing if self.training and torch.is_grad_enabled() else None
        for attn, ff in self.layers:
            if policy:
                latents = checkpointed(policy, self._block, attn, ff, x, latents)
            else:
                latents = self._block(attn, ff, x, latents)
        return self.norm(latents)


def media_attention_mask(
    text_time: torch.Tensor, num_media: int, num_latents: int, only_immediate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which media latents each text token may attend to.

    text_time: (B, L) long, the 1-based index of the image a token follows (0 = no image yet).
    Returns (mask, has_media): mask (B, 1, L, T*n) bool, True = attend; has_media (B, L) bool.

    Upstream fills disallowed scores with -max and then softmaxes, so a token with no allowed
    latent (text before any image, or after more `<image>` tokens than images) attends
    *uniformly* to all latents. Here such rows are all True in the mask and the caller zeroes
    their queries, which gives exactly uniform weights.
    """
    media_time = torch.arange(1, num_media + 1, device=text_time.device)
    media_time = media_time.repeat_interleave(num_latents)  # (T*n,)
    tt = text_time[:, :, None]  # (B, L, 1)
    allowed = tt == media_time if only_immediate else tt >= media_time  # (B, L, T*n)
    has_media = allowed.any(dim=-1)  # (B, L)
    mask = allowed | ~has_media[..., None]
    return mask[:, None], has_media


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the perceiver latents of the image they follow."""

    def __init__(
        self,
        *,
        dim: int,
        dim_visual: int,
        dim_head: int = 64,
        heads: int = 8,
        only_attend_immediate_media: bool = True,
    ):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        inner_dim = dim_head * heads

        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)
        self.only_attend_immediate_media = only_attend_immediate_media

    def media_keys_values(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """media: (B, T, n, Dv) latents -> keys, values: (B, h, T*n, d) each."""
        b, t, n, _ = media.shape
        media = media.reshape(b, t * n, media.shape[-1])  # (B, T*n, Dv)
        k, v = (_split_heads(z, self.heads) for z in self.to_kv(media).chunk(2, dim=-1))
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        media: torch.Tensor,
        text_time: torch.Tensor,
        media_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, L, D) text; media: (B, T, n, Dv) latents; text_time: (B, L). Returns (B, L, D).

        media_kv: `media_keys_values(media)` when the caller already has them (decoding: the
        media do not change between steps); None: computed here.
        """
        b, t, n, _ = media.shape
        q = _split_heads(self.to_q(self.norm(x)), self.heads)  # (B, h, L, d)
        k, v = self.media_keys_values(media) if media_kv is None else media_kv
        mask, has_media = media_attention_mask(text_time, t, n, self.only_attend_immediate_media)
        q = q * has_media[:, None, :, None].to(q.dtype)  # uniform weights where nothing allowed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        if self.only_attend_immediate_media:
            # Text before the first image gets no visual signal at all (upstream zeroes its
            # attention weights; to_out has no bias, so zeroing the output is the same).
            out = out * (text_time > 0)[:, None, :, None].to(out.dtype)
        return self.to_out(_merge_heads(out))  # (B, L, D)


class GatedCrossAttentionBlock(nn.Module):
    """Cross-attention + feed-forward, each behind a tanh gate initialised at 0."""

    def __init__(
        self,
        *,
        dim: int,
        dim_visual: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: int = 4,
        only_attend_immediate_media: bool = True,
    ):
        super().__init__()
        self.attn = MaskedCrossAttention(
            dim=dim,
            dim_visual=dim_visual,
            dim_head=dim_head,
            heads=heads,
            only_attend_immediate_media=only_attend_immediate_media,
        )
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = FeedForward(dim, mult=ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(
        self,
        x: torch.Tensor,
        media: torch.Tensor,
        text_time: torch.Tensor,
        media_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, L, D); media: (B, T, n, Dv); text_time: (B, L); media_kv: the media's keys
        and values, if already computed (`MaskedCrossAttention`). Returns (B, L, D)."""
        x = self.attn(x, media, text_time, media_kv) * self.attn_gate.tanh() + x
        x = self.ff(x) * self.ff_gate.tanh() + x
        return x

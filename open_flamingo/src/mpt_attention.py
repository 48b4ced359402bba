"""Scaled-dot-product attention for Hugging Face's MPT.

transformers' `MptAttention` only has an eager path: it materialises the (B, h, L, K) scores,
adds ALiBi, and keeps a float32 softmax of them for backward — at OF-3B training shapes about
0.8 GB per layer, 19 GB over 24 layers. Here the same attention runs through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels, nothing of size L x K kept),
with ALiBi and the causal / padding mask folded into one additive mask. That mask is built once
per LM call and shared by all layers.

Numerics: the eager path adds ALiBi to the scores and puts `finfo.min` at masked positions
before the softmax; the additive mask here holds exactly those values, so float32 results agree
to rounding (tests/test_mpt_attention.py), and in bfloat16 the kernel keeps the scores in float32
where eager rounds them to bfloat16.
"""

import types

import torch
import torch.nn.functional as F
from torch import nn

from .recompute import in_checkpointed_region


class _SharedMask:
    """The additive mask of the current LM call, reused by every layer (same inputs).

    Not inside a checkpointed layer: there the layer's replay in backward must run the same
    ops as its forward, and nothing of the region is kept for backward anyway. Not under
    torch.compile either: the compiled graph is pure, with no tensors kept on the side.
    """

    def __init__(self):
        self.inputs: tuple | None = None
        self.mask: torch.Tensor | None = None

    def get(self, position_bias, attention_mask, dtype, key_length, filled) -> torch.Tensor:
        if in_checkpointed_region() or torch.compiler.is_compiling():
            return additive_mask(position_bias, attention_mask, dtype, key_length, filled)
        inputs = (position_bias, attention_mask, filled, dtype, key_length)
        if (
            self.inputs is None
            or any(a is not b for a, b in zip(self.inputs[:3], inputs[:3], strict=True))  # objects
            or self.inputs[3:] != inputs[3:]  # values
        ):
            self.mask = additive_mask(position_bias, attention_mask, dtype, key_length, filled)
            self.inputs = inputs
        return self.mask


def alibi_bias(
    position_bias: torch.Tensor, key_length: int, filled: torch.Tensor | None = None
) -> torch.Tensor:
    """position_bias: (h, 1, S) ALiBi over the model's max length, S - 1 - j the distance of key
    j to the last. Returns the (1, h, 1, K) bias of the K keys.

    MPT's bias is relative to the last key. With a static cache the last of the K slots is not
    the last key: only `filled` (a 0-dim tensor) hold keys. Then each filled key gets the entry a
    dynamic cache of `filled` keys would give it (bitwise the same bias; softmax would not mind a
    per-row constant, but bfloat16 rounding would), and the empty slots, masked anyway, get 0.
    """
    if filled is None:
        return position_bias[None, :, :, -key_length:]
    max_len = position_bias.shape[-1]
    slots = torch.arange(key_length, device=position_bias.device)
    index = (slots + (max_len - filled)).clamp(max=max_len - 1)  # (K,)
    return position_bias[None, :, :, index]


def additive_mask(
    position_bias: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    key_length: int,
    filled: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """position_bias: (h, 1, S) ALiBi (see `alibi_bias`); attention_mask: (B, 1, L, K) bool,
    True = masked; filled: keys held by a static cache of K slots (None: all K are keys).
    Returns (B | 1, h | 1, L | 1, K) in `dtype`: ALiBi of the keys, `finfo(dtype).min` where
    masked.

    A query that may see no key at all (a left-padding position) is left unmasked instead. Eager
    MPT gives such rows uniform weights; SDPA kernels get their backward wrong for them (the
    log-sum-exp of a row of `finfo.min` is `finfo.min` itself). Either way the row is padding:
    its output reaches no real token (it is a masked key everywhere) and no loss.
    """
    mask = None
    if position_bias is not None:
        mask = alibi_bias(position_bias, key_length, filled).to(dtype)  # (1, h, 1, K)
    if attention_mask is not None:
        base = mask if mask is not None else torch.zeros((), dtype=dtype)
        blind = attention_mask.all(dim=-1, keepdim=True)  # (B, 1, L, 1)
        hidden = attention_mask & ~blind
        mask = base.to(attention_mask.device).masked_fill(hidden, torch.finfo(dtype).min)
    return mask


def _sdpa_forward(
    self,
    hidden_states: torch.Tensor,
    position_bias: torch.Tensor,
    cache=None,
    attention_mask: torch.Tensor | None = None,
    past_key_values=None,
    **kwargs,
):
    """MptAttention.forward through SDPA. hidden_states: (B, L, D). Returns ((B, L, D), None)."""
    cache = cache if cache is not None else past_key_values  # transformers >= 5.24 / earlier
    batch_size, seq_length = hidden_states.shape[:2]
    qkv = self.Wqkv(hidden_states)
    if self.clip_qkv:
        qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
    q, k, v = (
        t.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
        for t in qkv.chunk(3, dim=2)
    )  # (B, h, L, d) each
    filled = None
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)
        if getattr(cache, "is_compileable", False):  # static: k holds max_cache_len slots
            filled = cache.get_seq_length(self.layer_idx)
    mask = self._shared_mask.get(position_bias, attention_mask, q.dtype, k.shape[-2], filled)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=self.attn_dropout_p if self.training else 0.0,
        scale=self.softmax_scale,
    )  # (B, h, L, d)
    out = out.transpose(1, 2).reshape(batch_size, seq_length, -1)
    return self.out_proj(out), None


def use_sdpa_for_mpt(lang_encoder: nn.Module) -> int:
    """Run every MptAttention of `lang_encoder` through SDPA (in place); returns how many.

    Only the bound `forward` changes: module classes, parameters and state-dict keys stay.
    Attention weights are not materialised: with `output_attentions=True` they come back None.
    """
    from transformers.models.mpt.modeling_mpt import MptAttention

    shared = _SharedMask()
    patched = 0
    for module in lang_encoder.modules():
        if isinstance(module, MptAttention):
            module._shared_mask = shared
            module.forward = types.MethodType(_sdpa_forward, module)
            patched += 1
    return patched

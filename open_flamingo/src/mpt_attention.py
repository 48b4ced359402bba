"""Scaled-dot-product attention for Hugging Face's MPT, as modules registered in place.

transformers' `MptAttention` only has an eager path: it materialises the (B, h, L, K) scores,
adds ALiBi, and keeps a float32 softmax of them for backward — at OF-3B training shapes about
0.8 GB per layer, 19 GB over 24 layers. `SdpaMptAttention` runs the same attention through
`torch.nn.functional.scaled_dot_product_attention` (fused kernels, nothing of size L x K kept),
with ALiBi and the causal / padding mask folded into one additive mask. That mask is built once
per LM call and shared by all layers (`SharedMask`).

`use_sdpa_for_mpt` puts one in place of each `MptAttention` (`block.attn`): a new module that
holds the old one's weights under the same names, so state-dict keys do not change.

Numerics: the eager path adds ALiBi to the scores and puts `finfo.min` at masked positions
before the softmax; the additive mask here holds exactly those values, so float32 results agree
to rounding (tests/test_mpt_attention.py), and in bfloat16 the kernel keeps the scores in float32
where eager rounds them to bfloat16.

QK-LayerNorm (`attn_config.qk_ln`, which transformers' MPT ignores) lives on the attention module
as `q_ln` / `k_ln` (open_flamingo/src/mpt_norms.py adds them, with `EagerMptAttention`:
transformers' eager attention plus QK-LayerNorm, for a model not run through SDPA).
"""

import torch
import torch.nn.functional as F
from torch import nn


class SharedMask:
    """The additive mask of the current LM call, reused by every layer (MPT passes each layer
    the same ALiBi and boolean mask objects). Kept until the next call builds another."""

    def __init__(self):
        self.inputs: tuple | None = None
        self.mask: torch.Tensor | None = None

    def get(self, position_bias, attention_mask, dtype, key_length, filled) -> torch.Tensor:
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


def qkv_heads(attn: nn.Module, hidden_states: torch.Tensor):
    """hidden_states: (B, L, D) -> q, k, v, each (B, h, L, d), as MPT computes them.

    Wqkv, clamped to +-clip_qkv when set; then, when the module has QK-LayerNorm (`q_ln`,
    `k_ln`), q and k normalised over the full width D before the split into heads. A plain
    LayerNorm returns float32 under CUDA autocast: its output goes back to the input's dtype.
    """
    batch_size, seq_length = hidden_states.shape[:2]
    qkv = attn.Wqkv(hidden_states)
    if attn.clip_qkv:
        qkv = qkv.clamp(min=-attn.clip_qkv, max=attn.clip_qkv)
    q, k, v = qkv.chunk(3, dim=2)  # (B, L, D) each
    if getattr(attn, "q_ln", None) is not None:
        q = attn.q_ln(q).to(q.dtype)
        k = attn.k_ln(k).to(k.dtype)
    return tuple(
        t.reshape(batch_size, seq_length, attn.n_heads, attn.head_dim).transpose(1, 2)
        for t in (q, k, v)
    )


def _cached(attn: nn.Module, cache, k: torch.Tensor, v: torch.Tensor):
    """k, v (B, h, L, d) appended to `cache` (if any). Returns (k, v) of all K keys and, for a
    static cache of K slots, how many hold keys (a 0-dim tensor; None otherwise)."""
    if cache is None:
        return k, v, None
    k, v = cache.update(k, v, attn.layer_idx)
    if getattr(cache, "is_compileable", False):  # static: k holds max_cache_len slots
        return k, v, cache.get_seq_length(attn.layer_idx)
    return k, v, None


MPT_ATTENTION_SETTINGS = (
    "hidden_size",
    "n_heads",
    "max_seq_length",
    "head_dim",
    "softmax_scale",
    "attn_dropout_p",
    "clip_qkv",
    "layer_idx",
)


class _MptAttention(nn.Module):
    """An MPT attention module registered in place of `attn`, holding its weights under the
    same names (`Wqkv`, `out_proj`, and `q_ln` / `k_ln` where QK-LayerNorm is on) and its
    settings. forward takes `MptBlock`'s arguments: hidden_states (B, L, D), position_bias
    (h, 1, S) ALiBi, attention_mask (B, 1, L, K) bool (True = masked), and the KV cache."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.Wqkv = attn.Wqkv
        self.out_proj = attn.out_proj
        self.q_ln = getattr(attn, "q_ln", None)
        self.k_ln = getattr(attn, "k_ln", None)
        for name in MPT_ATTENTION_SETTINGS:
            setattr(self, name, getattr(attn, name))
        self.train(attn.training)

    def _heads(self, hidden_states: torch.Tensor, cache, past_key_values):
        """q (B, h, L, d) and k, v (B, h, K, d) of all keys, through the cache if any; `filled`:
        for a static cache, how many of its slots hold keys (`_cached`)."""
        cache = cache if cache is not None else past_key_values  # transformers >= 5.24 / earlier
        q, k, v = qkv_heads(self, hidden_states)
        k, v, filled = _cached(self, cache, k, v)
        return q, k, v, filled


class EagerMptAttention(_MptAttention):
    """transformers' eager MptAttention, with QK-LayerNorm.

    The same ops in the same order as transformers' (float32 softmax of the scores plus ALiBi,
    `finfo.min` at masked keys), so that without QK-LayerNorm the numbers are transformers'.
    With a static cache the keys get the ALiBi of a dynamic cache (`alibi_bias`). Returns
    ((B, L, D), (B, h, L, K) weights).
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_bias: torch.Tensor,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ):
        batch_size, seq_length = hidden_states.shape[:2]
        q, k, v, filled = self._heads(hidden_states, cache, past_key_values)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.softmax_scale  # (B, h, L, K)
        if position_bias is not None:
            scores = scores + alibi_bias(position_bias, k.shape[-2], filled)
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask, torch.finfo(q.dtype).min)
        weights = F.softmax(scores.float(), dim=-1).to(v.dtype)
        weights = F.dropout(weights, p=self.attn_dropout_p, training=self.training)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch_size, seq_length, -1)
        return self.out_proj(out), weights


class SdpaMptAttention(_MptAttention):
    """MPT attention through SDPA. Returns ((B, L, D), None): attention weights are not
    materialised (with `output_attentions=True` they come back None).

    The additive mask comes from `shared_mask`, built by the first layer of each LM call,
    except where the layer must build its own: under torch.compile (the compiled graph is
    pure, with no tensors kept on the side) and when `recomputed_in_backward` (its layer is
    under activation checkpointing, set by `Flamingo.set_gradient_checkpointing`) while
    training: the replay in backward must run the same ops as the forward, and nothing of the
    layer is kept for backward anyway.
    """

    def __init__(self, attn: nn.Module, shared_mask: SharedMask):
        super().__init__(attn)
        self.shared_mask = shared_mask
        self.recomputed_in_backward = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_bias: torch.Tensor,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ):
        batch_size, seq_length = hidden_states.shape[:2]
        q, k, v, filled = self._heads(hidden_states, cache, past_key_values)
        mask_inputs = (position_bias, attention_mask, q.dtype, k.shape[-2], filled)
        if torch.compiler.is_compiling() or (
            self.recomputed_in_backward and self.training and torch.is_grad_enabled()
        ):
            mask = additive_mask(*mask_inputs)
        else:
            mask = self.shared_mask.get(*mask_inputs)
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


def replace_attention(root: nn.Module, make) -> int:
    """Register `make(attn)` in place of every MPT attention module `attn` under `root`
    (transformers' MptAttention or one of ours); returns how many."""
    from transformers.models.mpt.modeling_mpt import MptAttention

    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (MptAttention, _MptAttention)):
                setattr(parent, name, make(child))
                replaced += 1
    return replaced


def use_sdpa_for_mpt(lang_encoder: nn.Module) -> int:
    """Run every MPT attention of `lang_encoder` through SDPA (in place); returns how many.

    Each becomes a `SdpaMptAttention` holding the same weights under the same names, and all
    share one mask per LM call.
    """
    shared = SharedMask()
    return replace_attention(lang_encoder, lambda attn: SdpaMptAttention(attn, shared))


def use_eager_mpt_attention(lang_encoder: nn.Module) -> int:
    """Run every MPT attention of `lang_encoder` eagerly, as transformers does (in place);
    returns how many."""
    return replace_attention(lang_encoder, EagerMptAttention)

"""The LayerNorms of an MPT config that transformers' `MptForCausalLM` ignores.

* `attn_config.qk_ln` (QK-LayerNorm): MosaicML's MPT normalises the queries and the keys of each
  attention layer over the full width, before the split into heads. transformers' class
  accepts the setting and drops it, weights included. `apply_mpt_norms` gives each attention
  module `q_ln` and `k_ln` (state-dict keys `transformer.blocks.N.attn.q_ln.weight` /
  `k_ln.weight`, as MosaicML saves them) and registers an `EagerMptAttention` that applies them
  in its place (mpt_attention.py; its SDPA attention applies them too).
* `norm_type: "low_precision_layernorm"`: MosaicML's LPLayerNorm, used by MPT-1B (MosaicGPT's
  `low_precision_layernorm`) and MPT-7B for every LayerNorm, QK-LayerNorm included. Under
  autocast it normalises in the autocast dtype (bfloat16) instead of float32. It decides with
  `torch.is_autocast_enabled()` without a device, which reports CUDA autocast only, so under
  CPU autocast it is an ordinary LayerNorm; `LowPrecisionLayerNorm` keeps that.

Both are applied in place: modules are added or replaced, parameters keep their names.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mpt.modeling_mpt import MptAttention, MptBlock, MptModel

from .mpt_attention import EagerMptAttention, replace_attention

NORM_TYPES = ("layernorm", "low_precision_layernorm")


class LowPrecisionLayerNorm(nn.LayerNorm):
    """MosaicML's low-precision LayerNorm. x: (..., D) -> (..., D).

    While CUDA autocast is on, x, weight and bias are cast to the autocast dtype of x's device
    and normalised in it (the result stays in that dtype); otherwise this is `nn.LayerNorm`.
    Either way autocast is off inside, as in MosaicML's code.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype(x.device.type)
            x = x.to(dtype)
            weight = weight.to(dtype) if weight is not None else None
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


def _layer_norm(width: int, eps: float, low_precision: bool, like: torch.Tensor) -> nn.LayerNorm:
    """A bias-free LayerNorm over `width` on `like`'s device and dtype (transformers' MPT has no
    biases, its LayerNorms' included)."""
    cls = LowPrecisionLayerNorm if low_precision else nn.LayerNorm
    return cls(width, eps=eps, bias=False, device=like.device, dtype=like.dtype)


def _as_low_precision(norm: nn.LayerNorm) -> LowPrecisionLayerNorm:
    """`norm` as a LowPrecisionLayerNorm holding the same parameters."""
    if isinstance(norm, LowPrecisionLayerNorm):
        return norm
    replacement = _layer_norm(norm.normalized_shape[0], norm.eps, True, norm.weight)
    replacement.weight = norm.weight
    replacement.bias = norm.bias
    return replacement


def apply_mpt_norms(lang_encoder: nn.Module) -> None:
    """Give a transformers MPT model (in place) the QK-LayerNorm and low-precision LayerNorms its
    config asks for (see the module docstring). Call before loading weights: new `q_ln` / `k_ln`
    weights start at 1. Raises ValueError for a norm_type other than those of `NORM_TYPES`.
    """
    config = lang_encoder.config
    if config.norm_type not in NORM_TYPES:
        raise ValueError(
            f"norm_type={config.norm_type!r} is not supported: transformers' MPT has LayerNorms "
            f"only ({' or '.join(NORM_TYPES)})."
        )
    low_precision = config.norm_type == "low_precision_layernorm"
    for module in list(lang_encoder.modules()):  # (modules are replaced)
        if low_precision and isinstance(module, MptModel):
            module.norm_f = _as_low_precision(module.norm_f)
        if low_precision and isinstance(module, MptBlock):
            module.norm_1 = _as_low_precision(module.norm_1)
            module.norm_2 = _as_low_precision(module.norm_2)
    if config.attn_config.qk_ln:
        replace_attention(
            lang_encoder,
            lambda attn: _with_qk_layernorm(attn, config.layer_norm_epsilon, low_precision),
        )


def _with_qk_layernorm(attn: nn.Module, eps: float, low_precision: bool) -> nn.Module:
    """`attn` given `q_ln` / `k_ln` over the full width; transformers' MptAttention becomes an
    EagerMptAttention, which applies them (ours already do)."""
    if getattr(attn, "q_ln", None) is None:
        attn.q_ln = _layer_norm(attn.hidden_size, eps, low_precision, attn.Wqkv.weight)
        attn.k_ln = _layer_norm(attn.hidden_size, eps, low_precision, attn.Wqkv.weight)
    if isinstance(attn, MptAttention):
        return EagerMptAttention(attn)
    return attn

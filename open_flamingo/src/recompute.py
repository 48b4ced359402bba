"""Activation checkpointing policies for the perceiver and the (cross-attention + decoder) layers.

* "full" (upstream's `--gradient_checkpointing`): keep only each layer's inputs; backward reruns
  the whole layer, matmuls included (about a third more FLOPs per step).
* "selective": keep what matmuls and attention produce, recompute everything else (norms,
  activations, dtype casts, residual adds, masks). Those are cheap elementwise ops, so backward
  does no extra matmul work, while the largest non-matmul activations (GELU outputs, bfloat16
  copies of float32 hidden states, float32 residual sums inside a layer) are not kept.
"""

import functools

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

POLICIES = ("full", "selective")

_aten = torch.ops.aten
# Ops whose outputs "selective" keeps: the FLOP-heavy ones.
SAVED_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
    _aten.convolution.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def normalize_policy(policy: bool | str | None) -> str | None:
    """True / "full" -> "full", "selective" -> "selective", False / None -> None."""
    if policy is True:
        return "full"
    if not policy:
        return None
    if policy not in POLICIES:
        raise ValueError(
            f"gradient_checkpointing must be a bool or one of {POLICIES}, got {policy!r}"
        )
    return policy


def _without_autocast_cache(function, device_type: str):
    """`function` with autocast's weight-cast cache off (autocast itself unchanged).

    Selective checkpointing replays the region's ops one for one in backward. Under autocast a
    weight already cast earlier in the step (by the LAION forward, say) comes from the cache and
    is not cast again in the forward, but is in the replay; without the cache both cast it.
    """

    @functools.wraps(function)
    def run(*args, **kwargs):
        if not torch.is_autocast_enabled(device_type):
            return function(*args, **kwargs)
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
            return function(*args, **kwargs)

    return run


def checkpointed(policy: str, function, *args, **kwargs):
    """`function(*args, **kwargs)` under activation checkpointing with `policy`."""
    if policy == "full":
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    device_type = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    return checkpoint(
        _without_autocast_cache(function, device_type),
        *args,
        use_reentrant=False,
        context_fn=functools.partial(create_selective_checkpoint_contexts, _keep_matmuls),
        **kwargs,
    )

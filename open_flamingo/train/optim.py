"""Optimizer and learning-rate schedule, as upstream OpenFlamingo sets them up."""

import torch
from torch import nn
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)


def decays(name: str) -> bool:
    """Upstream's rule, by parameter name: weight decay only on gated cross-attention weights
    whose names hold no gate, "norm" or "bias" (the perceiver and the embeddings get none). As
    upstream, the feed-forward's LayerNorm weight (`ff.0.weight`) is therefore decayed."""
    return (
        "gated_cross_attn_layer" in name
        and "ff_gate" not in name
        and "attn_gate" not in name
        and "norm" not in name
        and "bias" not in name
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    with_decay, without_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (with_decay if decays(name) else without_decay).append(param)
    return [
        {"params": with_decay, "weight_decay": weight_decay},
        {"params": without_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    cpu_offload: bool = False,
    device: torch.device | str | None = None,
):
    """torch's AdamW over the trainable parameters, with fused kernels when they will step on
    CUDA: `device` is where the run puts the model (`accelerator.device`; the optimizer is
    built before `accelerator.prepare` moves it), by default where its parameters are now.

    With the optimizer offloaded to CPU (`cpu_offload`, accelerate_configs/*_slurm.yaml),
    `accelerator.prepare` swaps whatever optimizer it is given for a DeepSpeedCPUAdam over the
    same parameter groups, in AdamW mode only when it was given a `torch.optim.AdamW`. Anything
    else, a DeepSpeedCPUAdam(adamw_mode=True) included, comes back as Adam with the weight decay
    added to the gradient (L2), which trains differently from DDP. So torch's AdamW is handed
    over in that case too, unfused, and DeepSpeed's CPU Adam steps it as AdamW."""
    groups = parameter_groups(model, weight_decay)
    if device is None:
        device = next(p.device for p in model.parameters() if p.requires_grad)
    fused = not cpu_offload and torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)


def build_scheduler(optimizer, name: str, warmup_steps: int, total_steps: int):
    """constant / linear / cosine, each after `warmup_steps` of linear warm-up."""
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    raise ValueError(f"Unknown --lr_scheduler {name!r}")

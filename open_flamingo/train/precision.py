"""--precision: the weight dtypes of a training run and its autocast.

Under `amp_bf16` (upstream's default) every matmul runs in bfloat16 under autocast, which casts
float32 weights to bfloat16 at each call. For trainable weights that is what float32 master
weights are for. For frozen weights (the vision tower, the LM's linear layers) the float32 copy
buys nothing: autocast would round it to the same bfloat16 tensor every time, and keep that
rounded copy alive for backward. So frozen Linear / Conv weights are stored in bfloat16 once:
the forward and backward are bit-for-bit those of float32 storage
(tests/test_training_precision.py), with ~2 bytes per frozen parameter less static memory and no
per-step weight casts saved for backward. Norms, embeddings and other parameters keep float32,
where autocast runs in float32 and bfloat16 storage would change results.
"""

import torch
from torch import nn

# --precision -> (accelerate mixed_precision, dtype of the model weights)
PRECISION = {
    "fp32": ("no", torch.float32),
    "amp_bf16": ("bf16", torch.float32),  # float32 weights, bfloat16 autocast (upstream default)
    "bf16": ("no", torch.bfloat16),  # pure bfloat16 weights, as upstream's "bf16"
    "fp16": ("fp16", torch.float32),  # float32 weights, float16 autocast with loss scaling
}

# Modules whose forward autocast casts to the autocast dtype (weights included).
_AUTOCAST_CAST = (nn.Linear, nn.Conv1d, nn.Conv2d)


def store_frozen_matmul_weights_in_bf16(model: nn.Module) -> int:
    """Cast the weights of frozen Linear / Conv modules to bfloat16; returns the parameter count.

    A module counts as frozen when none of its own parameters requires grad (a weight tied to
    a trainable embedding, as MPT's `lm_head`, stays float32).
    """
    converted = 0
    for module in model.modules():
        if not isinstance(module, _AUTOCAST_CAST):
            continue
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            module.to(torch.bfloat16)
            converted += sum(p.numel() for p in params)
    return converted


def cast_for_precision(model: nn.Module, precision: str, distributed_type: str = "NO") -> None:
    """Put the model's weights in the dtypes `--precision` trains with (in place).

    `distributed_type` is accelerate's (`accelerator.distributed_type.name`). FSDP flattens
    each unit's parameters into one tensor of one dtype, and DeepSpeed casts the whole model to
    its own precision, so frozen weights are left as they are under either.
    """
    model.to(PRECISION[precision][1])
    if precision == "amp_bf16" and distributed_type not in ("FSDP", "DEEPSPEED"):
        store_frozen_matmul_weights_in_bf16(model)

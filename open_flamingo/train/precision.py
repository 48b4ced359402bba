"""--precision in training: the weight dtypes of a run and its autocast (the table of dtypes is
`open_flamingo/src/precision.py`, shared with evaluation).

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

from open_flamingo.src.precision import PRECISIONS, Precision

# The trainer's `fp16` is float16 autocast over float32 weights, with loss scaling (accelerate's
# "fp16"), not float16 weights: AdamW on float16 weights, without float32 master copies, drops
# every update below float16's resolution.
_TRAINING_NAMES = {"fp16": "amp"}
# autocast dtype -> accelerate's `mixed_precision`
_MIXED_PRECISION = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


def training_precision(flag: str) -> Precision:
    """The weight and autocast dtypes the trainer's `--precision flag` means."""
    return PRECISIONS[_TRAINING_NAMES.get(flag, flag)]


def mixed_precision(flag: str) -> str:
    """accelerate's `mixed_precision` for the trainer's `--precision flag`."""
    return _MIXED_PRECISION[training_precision(flag).autocast]


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


def cast_for_precision(model: nn.Module, precision: str, *, one_weight_dtype: bool = False) -> None:
    """Put the model's weights in the dtypes `--precision` trains with (in place).

    `one_weight_dtype`: the training backend keeps every weight in one dtype (FSDP flattens
    each unit's parameters into one tensor, DeepSpeed casts the whole model to its own
    precision), so frozen weights are left as they are (backend/).
    """
    dtypes = training_precision(precision)
    model.to(dtypes.weights)
    if dtypes == PRECISIONS["amp_bf16"] and not one_weight_dtype:
        store_frozen_matmul_weights_in_bf16(model)

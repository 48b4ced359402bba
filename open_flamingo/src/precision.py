"""`--precision`: the dtype the weights are stored in, and the dtype autocast runs matmuls in.

One table for evaluation and training. The names are upstream OpenFlamingo's: `bf16` / `fp16`
store every weight in that dtype, `amp_bf16` (alias `amp_bfloat16`) and `amp` keep float32
weights under bfloat16 / float16 autocast. Training reads its `fp16` as `amp`
(`open_flamingo/train/precision.py` says why).
"""

from typing import NamedTuple

import torch


class Precision(NamedTuple):
    weights: torch.dtype  # what the model's weights are cast to
    autocast: torch.dtype | None  # the autocast dtype of the forward, None: no autocast


PRECISIONS = {
    "fp32": Precision(torch.float32, None),
    "bf16": Precision(torch.bfloat16, None),
    "fp16": Precision(torch.float16, None),
    "amp_bf16": Precision(torch.float32, torch.bfloat16),
    "amp_bfloat16": Precision(torch.float32, torch.bfloat16),
    "amp": Precision(torch.float32, torch.float16),
}

"""The FLOPs of one training step, counted without changing its numbers.

torch's `FlopCounterMode` runs every operator it has no formula for through that operator's
Python decomposition. For `aten.silu_backward` (the MLP of LLaMA-family LMs) the decomposition
rounds differently from the native kernel, so the counted step's gradients differ in their last
bits. The trainer counts the first step of each process: a resumed run then computed its first
step after the checkpoint differently from the uninterrupted run, and drifted from it (issue 15:
SmolLM2-135M's step-3 grad norm 5.374663829803467 against 5.374664306640625).

`StepFlops` counts with the same formulas (`torch.utils.flop_counter.flop_registry`: matmuls,
convolutions, attention kernels) but runs every operator as it is, so a counted step is
bit-identical to an uncounted one. Operators without a formula count zero (on the CPU that
includes the fused flash-attention kernel; MFU is reported for known GPUs).
"""

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class _CountingMode(TorchDispatchMode):
    """Adds the FLOPs of each operator that has a formula; decomposes nothing."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


class StepFlops:
    """Counts the FLOPs of one training step (forward + backward), once: the first time it is
    entered. `flops` is None until then."""

    def __init__(self):
        self.flops: int | None = None
        self._mode: _CountingMode | None = None

    def __enter__(self) -> "StepFlops":
        if self.flops is None:
            self._mode = _CountingMode()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self.flops = self._mode.total
            self._mode = None

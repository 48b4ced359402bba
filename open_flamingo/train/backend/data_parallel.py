"""DDP (accelerate's MULTI_GPU / MULTI_CPU): every process holds the whole model, and a backward
reduces the gradients across processes, bucket by bucket, as it computes them."""

import contextlib

from .base import TrainingBackend


class DataParallelBackend(TrainingBackend):
    name = "DDP"

    def deferred_gradient_sync(self, model) -> contextlib.AbstractContextManager:
        # A DDP forward arms the reduction of the next backward. The step's first forward must
        # not, or the backward of the summed loss would reduce every gradient twice.
        return self.accelerator.no_sync(model)

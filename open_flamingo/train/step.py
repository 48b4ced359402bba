"""One training micro-step: one interleaved batch and one LAION batch.

loss = loss_interleaved * loss_multiplier_interleaved + loss_laion * loss_multiplier_laion, one
backward, then (at an accumulation boundary) gradient clipping and the optimizer step. A
non-finite loss on any rank makes every rank skip the backward, so ranks never fall out of step;
a non-finite gradient norm (the same on every rank) skips the optimizer step.
What DDP, DeepSpeed and FSDP do differently is the training backend's (backend/).
The trainer (`loop.py`) and `scripts/benchmark_train.py` both run exactly this.
"""

import contextlib
from dataclasses import dataclass

import torch

from .backend import TrainingBackend
from .config import OptimConfig
from .flops import StepFlops


@dataclass
class StepResult:
    loss: torch.Tensor  # () float32, detached
    loss_interleaved: torch.Tensor
    loss_laion: torch.Tensor
    finite: bool
    grad_norm: float | None  # at a boundary, where the backend clips (not DeepSpeed's engine)
    tokens: int  # attended tokens of both batches on this process
    samples: int


class TrainStep:
    """Callable micro-step over a model and optimizer that `backend.wrap` prepared.

    `max_grad_norm` and the loss multipliers come from the run's OptimConfig. FLOPs of the first
    call on the main process are counted (`self.flops`), for MFU.
    """

    def __init__(self, optim: OptimConfig, backend: TrainingBackend, model, optimizer):
        self.optim = optim
        self.backend = backend
        self.accelerator = backend.accelerator
        self.model = model
        self.optimizer = optimizer
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.flops = StepFlops()

    def loss(self, batch: dict) -> torch.Tensor:
        device = self.accelerator.device
        output = self.model(
            vision_x=batch["images"].to(device, non_blocking=True),
            lang_x=batch["input_ids"].to(device, non_blocking=True),
            attention_mask=batch["attention_mask"].to(device, non_blocking=True),
            labels=batch["labels"].to(device, non_blocking=True),
        )
        return output.loss

    def _all_finite(self, loss: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        return self.accelerator.reduce(bad, reduction="sum").item() == 0

    def __call__(self, batch_interleaved: dict, batch_laion: dict) -> StepResult:
        optim, acc = self.optim, self.accelerator
        measure = self.flops if acc.is_main_process else contextlib.nullcontext()
        with acc.accumulate(self.model), measure:
            with self.backend.deferred_gradient_sync(self.model):
                loss_laion = self.loss(batch_laion)
            loss_interleaved = self.loss(batch_interleaved)
            loss = (
                loss_interleaved * optim.loss_multiplier_interleaved
                + loss_laion * optim.loss_multiplier_laion
            )
            finite = self._all_finite(loss.detach())
            if finite:
                acc.backward(loss)
            grad_norm = None
            if finite and acc.sync_gradients:
                grad_norm = self.backend.clip_gradients(self.trainable, optim.max_grad_norm)
            if grad_norm is not None:
                # The norm of the reduced gradients, the same on every rank. Under fp16 the
                # loss scaler skips overflowing steps itself.
                finite = acc.scaler is not None or bool(torch.isfinite(grad_norm))
                if not finite:
                    self.optimizer.zero_grad(set_to_none=True)  # nothing left to apply
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(
            loss=loss.detach().float(),
            loss_interleaved=loss_interleaved.detach().float(),
            loss_laion=loss_laion.detach().float(),
            finite=finite,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens=int(
                batch_interleaved["attention_mask"].sum() + batch_laion["attention_mask"].sum()
            ),
            samples=batch_interleaved["input_ids"].shape[0] + batch_laion["input_ids"].shape[0],
        )

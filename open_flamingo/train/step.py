"""One training micro-step: one interleaved batch and one LAION batch (`__call__`), or the parts
of a mixture's step (`run`, feeds.py).

loss = loss_interleaved * loss_multiplier_interleaved + loss_laion * loss_multiplier_laion (in
general the sum over the parts of multiplier x loss; a text-only part has no images), one
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
class StepPart:
    """One batch of a micro-step: its source's name, the batch, its loss multiplier."""

    name: str
    batch: dict
    loss_multiplier: float


def paired_parts(batch_interleaved: dict, batch_laion: dict, optim: OptimConfig) -> list[StepPart]:
    """Upstream's micro-step: LAION first (the step defers the gradient sync for all but its
    last part), then the interleaved batch, each with its --loss_multiplier_*."""
    return [
        StepPart("laion", batch_laion, optim.loss_multiplier_laion),
        StepPart("interleaved", batch_interleaved, optim.loss_multiplier_interleaved),
    ]


@dataclass
class StepResult:
    loss: torch.Tensor  # () float32, detached
    losses: dict[str, torch.Tensor]  # each part's loss by source name, () float32, detached
    finite: bool
    grad_norm: float | None  # at a boundary, where the backend clips (not DeepSpeed's engine)
    tokens: int  # attended tokens of all the parts on this process
    samples: int
    samples_by_source: dict[str, int]

    @property
    def loss_interleaved(self) -> torch.Tensor:
        return self.losses["interleaved"]

    @property
    def loss_laion(self) -> torch.Tensor:
        return self.losses["laion"]


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
        images = batch.get("images")  # none in a text-only batch: the plain LM's loss
        output = self.model(
            vision_x=None if images is None else images.to(device, non_blocking=True),
            lang_x=batch["input_ids"].to(device, non_blocking=True),
            attention_mask=batch["attention_mask"].to(device, non_blocking=True),
            labels=batch["labels"].to(device, non_blocking=True),
        )
        return output.loss

    def _all_finite(self, loss: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        return self.accelerator.reduce(bad, reduction="sum").item() == 0

    def __call__(
        self, batch_interleaved: dict | list[StepPart], batch_laion: dict | None = None
    ) -> StepResult:
        """One interleaved and one LAION batch (upstream's step), or the list of a step's parts
        (`run`), as the trainer passes them."""
        if batch_laion is None:
            return self.run(batch_interleaved)
        return self.run(paired_parts(batch_interleaved, batch_laion, self.optim))

    def run(self, parts: list[StepPart]) -> StepResult:
        """The micro-step over `parts`: all but the last forward with the gradient sync
        deferred, loss = sum of multiplier x loss in their order, one backward."""
        optim, acc = self.optim, self.accelerator
        measure = self.flops if acc.is_main_process else contextlib.nullcontext()
        *first, last = parts
        with acc.accumulate(self.model), measure:
            with self.backend.deferred_gradient_sync(self.model):
                losses = [self.loss(part.batch) for part in first]
            losses.append(self.loss(last.batch))
            loss = losses[0] * parts[0].loss_multiplier
            for part, part_loss in zip(parts[1:], losses[1:], strict=True):
                loss = loss + part_loss * part.loss_multiplier
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
        samples = {part.name: part.batch["input_ids"].shape[0] for part in parts}
        return StepResult(
            loss=loss.detach().float(),
            losses={
                part.name: part_loss.detach().float()
                for part, part_loss in zip(parts, losses, strict=True)
            },
            finite=finite,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens=sum(int(part.batch["attention_mask"].sum()) for part in parts),
            samples=sum(samples.values()),
            samples_by_source=samples,
        )

"""One training micro-step: one interleaved batch and one LAION batch.

loss = loss_interleaved * loss_multiplier_interleaved + loss_laion * loss_multiplier_laion, one
backward, then (at an accumulation boundary) gradient clipping and the optimizer step. A
non-finite loss on any rank makes every rank skip the backward, so ranks never fall out of step.
The trainer (`loop.py`) and `scripts/benchmark_train.py` both run exactly this.
"""

import contextlib
from dataclasses import dataclass

import torch

from .fsdp import mask_embedding_rows, whole
from .metrics import StepFlops


@dataclass
class StepResult:
    loss: torch.Tensor  # () float32, detached
    loss_interleaved: torch.Tensor
    loss_laion: torch.Tensor
    finite: bool
    grad_norm: float | None  # after a synchronised step without DeepSpeed, else None
    tokens: int  # attended tokens of both batches on this process
    samples: int


class TrainStep:
    """Callable micro-step over an `accelerator.prepare`d model and optimizer.

    `max_grad_norm` and the loss multipliers come from the training flags. FLOPs of the first
    call on the main process are counted (`self.flops`), for MFU. `sharded_embedding_rows`:
    under FSDP, the input-embedding rows whose gradient is kept (fsdp.py).
    """

    def __init__(self, args, accelerator, model, optimizer, sharded_embedding_rows=None):
        self.args = args
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.deepspeed = accelerator.distributed_type.name == "DEEPSPEED"
        self.ddp = accelerator.distributed_type.name in ("MULTI_GPU", "MULTI_CPU")
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.flops = StepFlops()
        self.sharded_embedding_rows = sharded_embedding_rows
        self.embedding = accelerator.unwrap_model(model).lang_encoder.get_input_embeddings()

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
        args, acc = self.args, self.accelerator
        measure = self.flops if acc.is_main_process else contextlib.nullcontext()
        with acc.accumulate(self.model), measure:
            # DDP: the first forward must not arm the gradient reduction; the backward of the
            # summed loss then reduces each gradient once.
            first = acc.no_sync(self.model) if self.ddp else contextlib.nullcontext()
            with first:
                loss_laion = self.loss(batch_laion)
            loss_interleaved = self.loss(batch_interleaved)
            loss = (
                loss_interleaved * args.loss_multiplier_interleaved
                + loss_laion * args.loss_multiplier_laion
            )
            finite = self._all_finite(loss.detach())
            if finite:
                acc.backward(loss)
            grad_norm = None
            if finite and acc.sync_gradients and not self.deepspeed:
                if self.sharded_embedding_rows:
                    mask_embedding_rows(self.embedding.weight, self.sharded_embedding_rows)
                grad_norm = whole(acc.clip_grad_norm_(self.trainable, args.max_grad_norm))
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

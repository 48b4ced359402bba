"""The training loop: epochs of micro-steps (`step.py`), an optimizer step every
`gradient_accumulation_steps` micro-steps (gradients are synchronised only then), the schedule,
logging and checkpoints.
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpointing import checkpoint_steps, delete_previous_checkpoints, save_checkpoint
from .metrics import MetricsLogger, peak_flops, peak_memory_gib
from .step import TrainStep


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-steps done in the current epoch
    nonfinite_skipped: int = 0


def embedding_gradient_mask(model, token_ids: list[int]):
    """Keep the input-embedding gradient only on `token_ids` rows (upstream trains only the
    `<image>` / `<|endofchunk|>` rows). A tensor hook, so it applies before DDP / DeepSpeed see
    the gradient. Returns the hook handle. (FSDP replaces the weight: `fsdp.mask_embedding_rows`
    instead, through `TrainStep`.)"""
    weight = model.lang_encoder.get_input_embeddings().weight
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[token_ids] = 1

    def keep_rows(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(device=grad.device, dtype=grad.dtype)

    return weight.register_hook(keep_rows)


class Trainer:
    def __init__(
        self,
        args,
        accelerator,
        model,
        optimizer,
        scheduler,
        loaders: dict,
        run_dir: Path,
        state: TrainerState | None = None,
        sharded_embedding_rows: list[int] | None = None,
    ):
        self.args = args
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loaders = loaders
        self.run_dir = run_dir
        self.state = state or TrainerState()
        self.metrics = MetricsLogger(run_dir, accelerator, args)
        self.num_batches = len(loaders["interleaved"])
        self.total_steps = args.num_epochs * self.num_batches // args.gradient_accumulation_steps
        self.micro_step = TrainStep(args, accelerator, model, optimizer, sharded_embedding_rows)
        self.peak_flops = peak_flops(args.peak_tflops)
        self._window: dict[str, float] = {}

    # ------------------------------------------------------------------ the run
    def train(self) -> None:
        args, acc = self.args, self.accelerator
        progress = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        window_start = time.perf_counter()
        for epoch in range(self.state.epoch, args.num_epochs):
            self.state.epoch = epoch
            for loader in self.loaders.values():
                loader.set_epoch(epoch)
            iterators = {name: iter(loader) for name, loader in self.loaders.items()}
            while self.state.batch_in_epoch < self.num_batches:
                fetch_start = time.perf_counter()
                batch_interleaved = next(iterators["interleaved"])
                batch_laion = next(iterators["laion"])
                self._add("data_wait_s", time.perf_counter() - fetch_start)
                result = self.micro_step(batch_interleaved, batch_laion)
                self.state.batch_in_epoch += 1
                if not result.finite:
                    self.state.nonfinite_skipped += 1
                for key in ("loss", "loss_interleaved", "loss_laion"):
                    self._add(key, getattr(result, key).item(), count=True)
                self._add("tokens", result.tokens)
                self._add("samples", result.samples)
                if result.grad_norm is not None:
                    self._window["grad_norm"] = result.grad_norm
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                self.state.step += 1
                progress.update(1)
                if self.state.step % args.logging_steps == 0:
                    elapsed = time.perf_counter() - window_start
                    self._log(elapsed, progress)
                    window_start = time.perf_counter()
                if self._checkpoint_due():
                    self._save()
            self.state.batch_in_epoch = 0
        self.state.epoch = args.num_epochs
        if self.state.step not in checkpoint_steps(self.run_dir):
            self._save()
        progress.close()
        self.metrics.close()

    # ------------------------------------------------------------------ helpers
    def _add(self, key: str, value: float, count: bool = False) -> None:
        self._window[key] = self._window.get(key, 0.0) + value
        if count:
            self._window[f"n_{key}"] = self._window.get(f"n_{key}", 0) + 1

    def _log(self, elapsed: float, progress) -> None:
        acc, window = self.accelerator, self._window
        means = torch.tensor(
            [
                window[k] / max(window[f"n_{k}"], 1)
                for k in ("loss", "loss_interleaved", "loss_laion")
            ],
            device=acc.device,
        )
        means = acc.reduce(means, reduction="mean").tolist()
        totals = acc.reduce(
            torch.tensor(
                [window["samples"], window["tokens"]], device=acc.device, dtype=torch.float64
            ),
            reduction="sum",
        ).tolist()
        steps = self.args.logging_steps
        row = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "loss": means[0],
            "loss_interleaved": means[1],
            "loss_laion": means[2],
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": window.get("grad_norm"),
            "samples_per_s": totals[0] / elapsed,
            "tokens_per_s": totals[1] / elapsed,
            "step_time_s": elapsed / steps,
            "data_wait_s": window.get("data_wait_s", 0.0) / steps,
            "mfu": self._mfu(elapsed / steps),
            "nonfinite_skipped": self.state.nonfinite_skipped,
            "peak_memory_gib": peak_memory_gib(acc.device),
        }
        for name, loader in self.loaders.items():
            for reason, n in loader.skip_counts().items():
                row[f"skipped/{name}/{reason}"] = n
        self.metrics.log(row)
        progress.set_postfix(
            loss=f"{means[0]:.3f}",
            interleaved=f"{means[1]:.3f}",
            laion=f"{means[2]:.3f}",
            samples_s=f"{row['samples_per_s']:.1f}",
        )
        self._window = {}

    def _mfu(self, step_time: float) -> float | None:
        """Model FLOPs utilisation of one process (FLOPs counted once, on the first step)."""
        flops = self.micro_step.flops.flops
        if flops is None or self.peak_flops is None or step_time <= 0:
            return None
        micro_steps = self.args.gradient_accumulation_steps
        return flops * micro_steps / step_time / self.peak_flops

    def _checkpoint_due(self) -> bool:
        step = self.state.step
        return (
            step % self.args.checkpointing_steps == 0
            or step in self.args.special_checkpointing_steps
        )

    def _save(self) -> None:
        state = asdict(self.state)
        if self.state.batch_in_epoch >= self.num_batches:  # the epoch is complete
            state.update(epoch=self.state.epoch + 1, batch_in_epoch=0)
        save_checkpoint(
            self.accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            self.loaders,
            state,
            self.run_dir,
        )
        if self.args.delete_previous_checkpoint and self.accelerator.is_main_process:
            delete_previous_checkpoints(
                self.run_dir, self.state.step, self.args.special_checkpointing_steps
            )

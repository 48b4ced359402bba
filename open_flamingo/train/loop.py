"""The training loop: epochs of micro-steps (`step.py`), an optimizer step every
`gradient_accumulation_steps` micro-steps (gradients are synchronised only then), the schedule,
logging and checkpoints.

A micro-step whose loss or gradient is not finite is skipped (no update) with a warning; after
`--max_nonfinite_steps` of them in a row the run stops with NonFiniteLossError. After each
optimizer step the ranks agree whether a stop signal came (`preemption.py`); if so they save a
checkpoint and `train()` returns REQUEUE_EXIT_CODE.
"""

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from open_flamingo.data.skips import outcome

from .agreement import any_rank
from .backend import TrainingBackend
from .checkpointing import checkpoint_steps, delete_previous_checkpoints, save_checkpoint
from .config import TrainConfig
from .feeds import make_feed
from .metrics import MetricsLogger, peak_flops, peak_memory_gib
from .preemption import REQUEUE_EXIT_CODE, StopRequest, mark_for_requeue
from .step import TrainStep

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many micro-steps in a row had a non-finite loss or gradient."""


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-steps done in the current epoch
    nonfinite_skipped: int = 0
    data_order: dict = field(default_factory=dict)  # run_folder.data_order, checked on resume


class Trainer:
    """Runs the loop over a model and optimizer that `backend.wrap` prepared."""

    def __init__(
        self,
        config: TrainConfig,
        backend: TrainingBackend,
        model,
        optimizer,
        scheduler,
        loaders: dict,
        run_dir: Path,
        state: TrainerState | None = None,
        stop: StopRequest | None = None,
        feed=None,
    ):
        self.optim, self.logging = config.optim, config.logging
        self.checkpoints = config.checkpoint
        self.backend = backend
        self.accelerator = backend.accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loaders = loaders
        self.run_dir = run_dir
        self.state = state or TrainerState()
        self.metrics = MetricsLogger(run_dir, self.accelerator, config.logging)
        # the batches of each micro-step (feeds.py)
        self.feed = feed if feed is not None else make_feed(config, loaders)
        self.num_batches = self.feed.num_batches
        micro_steps = self.optim.gradient_accumulation_steps
        self.total_steps = self.optim.num_epochs * self.num_batches // micro_steps
        self.micro_step = TrainStep(config.optim, backend, model, optimizer)
        self.peak_flops = peak_flops(config.logging.peak_tflops)
        self._window: dict[str, float] = {}
        self._logged_step = self.state.step  # the step of the last metrics row
        self._run = {"samples": 0.0, "last_loss": None}  # this launch's, for the summary
        self.stop = stop or StopRequest()
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------------ the run
    def train(self) -> int:
        """Run to the end (returns 0), or until a stop signal (returns REQUEUE_EXIT_CODE after
        saving a checkpoint)."""
        acc, num_epochs = self.accelerator, self.optim.num_epochs
        progress = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        window_start = run_start = time.perf_counter()
        first_step = self.state.step
        for epoch in range(self.state.epoch, num_epochs):
            self.state.epoch = epoch
            self.feed.start_epoch(epoch)
            while self.state.batch_in_epoch < self.num_batches:
                fetch_start = time.perf_counter()
                parts = self.feed.next_parts()
                self._add("data_wait_s", time.perf_counter() - fetch_start)
                result = self.micro_step(parts)
                self.state.batch_in_epoch += 1
                self._count_finite(result)
                self._add("loss", result.loss.item(), count=True)
                for name, loss in result.losses.items():
                    self._add(f"loss_{name}", loss.item(), count=True)
                for name, samples in result.samples_by_source.items():
                    self._add(f"samples/{name}", samples)
                self._add("tokens", result.tokens)
                self._add("samples", result.samples)
                if result.grad_norm is not None:
                    self._window["grad_norm"] = result.grad_norm
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                self.state.step += 1
                progress.update(1)
                last_step = self.state.step == self.total_steps
                if self.state.step % self.logging.logging_steps == 0 or last_step:
                    elapsed = time.perf_counter() - window_start
                    self._log(elapsed, progress)
                    window_start = time.perf_counter()
                if self._checkpoint_due():
                    self._save()
                if any_rank(acc, self.stop.requested):
                    return self._stop_early(progress)
            self.state.batch_in_epoch = 0
        self.state.epoch = num_epochs
        if self.state.step not in checkpoint_steps(self.run_dir):
            self._save()
        progress.close()
        self.metrics.close()
        self._summarize(first_step, time.perf_counter() - run_start)
        return 0

    def _stop_early(self, progress) -> int:
        """Save a checkpoint of this step (unless there is one) and mark the job for requeue."""
        if self.state.step not in checkpoint_steps(self.run_dir):
            self._save()
        progress.close()
        self.metrics.close()
        checkpoint = self.run_dir / f"checkpoint-{self.state.step}"
        if self.accelerator.is_main_process:
            mark_for_requeue(checkpoint)
        any_rank(self.accelerator, False)  # no rank exits (ending the job step) before that
        logger.warning(
            "stopping at step %d on %s: %s is complete; continue with "
            "--resume_from_checkpoint latest (exit status %d)",
            self.state.step,
            self.stop.signal_name or "another rank's signal",
            checkpoint,
            REQUEUE_EXIT_CODE,
        )
        return REQUEUE_EXIT_CODE

    def _count_finite(self, result) -> None:
        """Count a skipped micro-step, warn, and stop after too many in a row."""
        if result.finite:
            self.nonfinite_in_a_row = 0
            return
        self.state.nonfinite_skipped += 1
        self.nonfinite_in_a_row += 1
        limit = self.optim.max_nonfinite_steps
        if self.accelerator.is_main_process:
            logger.warning(
                "step %d: non-finite loss or gradient (loss %.4g on this process), update "
                "skipped; %d in a row (the run stops at %d, --max_nonfinite_steps)",
                self.state.step + 1,
                result.loss.item(),
                self.nonfinite_in_a_row,
                limit,
            )
        if self.nonfinite_in_a_row >= limit:
            last = checkpoint_steps(self.run_dir)
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} micro-steps in a row had a non-finite loss or "
                f"gradient (the last in step {self.state.step + 1}), so the run stops. Their "
                "updates were skipped; the last checkpoint is "
                f"{f'checkpoint-{last[-1]}' if last else 'none'}. Lower --learning_rate, check "
                "the data, or raise --max_nonfinite_steps."
            )

    # ------------------------------------------------------------------ helpers
    def _add(self, key: str, value: float, count: bool = False) -> None:
        self._window[key] = self._window.get(key, 0.0) + value
        if count:
            self._window[f"n_{key}"] = self._window.get(f"n_{key}", 0) + 1

    def _log(self, elapsed: float, progress) -> None:
        acc, window = self.accelerator, self._window
        # every rank has the same keys: all ranks draw the same sources (mixture.py)
        loss_keys = ["loss", *(f"loss_{name}" for name in self.feed.source_names)]
        counted = [window.get(f"n_{k}", 0) for k in loss_keys]  # 0: a source not drawn
        means = torch.tensor(
            [window.get(k, 0.0) / max(n, 1) for k, n in zip(loss_keys, counted, strict=True)],
            device=acc.device,
        )
        means = acc.reduce(means, reduction="mean").tolist()
        means = [m if n else None for m, n in zip(means, counted, strict=True)]
        totals = acc.reduce(
            torch.tensor(
                [window["samples"], window["tokens"]], device=acc.device, dtype=torch.float64
            ),
            reduction="sum",
        ).tolist()
        steps = self.state.step - self._logged_step
        self._logged_step = self.state.step
        row = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            **dict(zip(loss_keys, means, strict=True)),  # loss_<source>: None if not drawn
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
                row[f"{outcome(reason)}/{name}/{reason}"] = n
        if self.feed.per_source_metrics:
            row.update(self._source_totals())
        self.metrics.log(row)
        self._run["samples"] += totals[0]
        self._run["last_loss"] = means[0]
        progress.set_postfix(
            loss=f"{means[0]:.3f}",
            **{
                k[len("loss_") :]: f"{m:.3f}"
                for k, m in zip(loss_keys[1:], means[1:], strict=True)
                if m is not None
            },
            samples_s=f"{row['samples_per_s']:.1f}",
        )
        self._window = {}

    def _summarize(self, first_step: int, seconds: float) -> None:
        """The end-of-run lines: what was trained, the skipped and trimmed inputs of every rank,
        and where the checkpoints and metrics are."""
        counts: dict[str, dict[str, int]] = {"skipped": {}, "trimmed": {}}
        for name, loader in self.loaders.items():
            for reason, n in loader.skip_counts().items():
                key = f"{name}/{reason}"
                counts[outcome(reason)][key] = counts[outcome(reason)].get(key, 0) + n
        ranks = gather_object([counts])
        if not self.accelerator.is_main_process:
            return
        totals = {kind: {} for kind in counts}
        for rank_counts in ranks:
            for kind, by_reason in rank_counts.items():
                for key, n in by_reason.items():
                    totals[kind][key] = totals[kind].get(key, 0) + n
        steps, samples = self.state.step - first_step, self._run["samples"]
        last = checkpoint_steps(self.run_dir)
        logger.info(
            "run complete: steps %d-%d of %d in %.1f s (%.0f samples, %.1f samples/s), last "
            "loss %s, %d micro-steps skipped as non-finite",
            first_step + 1 if steps else first_step,
            self.state.step,
            self.total_steps,
            seconds,
            samples,
            samples / seconds if seconds > 0 else 0.0,
            "n/a" if self._run["last_loss"] is None else f"{self._run['last_loss']:.4f}",
            self.state.nonfinite_skipped,
        )
        for kind, by_reason in totals.items():
            listed = ", ".join(f"{key} {n}" for key, n in sorted(by_reason.items()))
            logger.info("inputs %s: %s", kind, listed or "none")
        logger.info(
            "checkpoints in %s (latest checkpoint-%s); metrics in %s",
            self.run_dir,
            last[-1] if last else "none",
            self.metrics.path,
        )

    def _source_totals(self) -> dict:
        """A mixture's per-source numbers: samples in this window (all processes) and the
        epochs each source has started."""
        names = self.feed.source_names
        counts = torch.tensor(
            [self._window.get(f"samples/{name}", 0.0) for name in names],
            device=self.accelerator.device,
            dtype=torch.float64,
        )
        counts = self.accelerator.reduce(counts, reduction="sum").tolist()
        row = {f"samples/{name}": int(n) for name, n in zip(names, counts, strict=True)}
        row.update({f"epoch/{n}": e for n, e in self.feed.source_epochs().items()})
        return row

    def _mfu(self, step_time: float) -> float | None:
        """Model FLOPs utilisation of one process (FLOPs counted once, on the first step)."""
        flops = self.micro_step.flops.flops
        if flops is None or self.peak_flops is None or step_time <= 0:
            return None
        micro_steps = self.optim.gradient_accumulation_steps
        return flops * micro_steps / step_time / self.peak_flops

    def _checkpoint_due(self) -> bool:
        step = self.state.step
        return (
            step % self.checkpoints.checkpointing_steps == 0
            or step in self.checkpoints.special_checkpointing_steps
        )

    def _save(self) -> None:
        state = asdict(self.state)
        if self.state.batch_in_epoch >= self.num_batches:  # the epoch is complete
            state.update(epoch=self.state.epoch + 1, batch_in_epoch=0)
        folder = save_checkpoint(
            self.backend,
            self.model,
            self.optimizer,
            self.scheduler,
            self.feed.stateful(),
            state,
            self.run_dir,
        )
        self.metrics.save_checkpoint(folder / "checkpoint.pt")
        if self.checkpoints.delete_previous_checkpoint and self.accelerator.is_main_process:
            delete_previous_checkpoints(
                self.run_dir, self.state.step, self.checkpoints.special_checkpointing_steps
            )

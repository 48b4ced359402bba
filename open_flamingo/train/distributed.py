"""The Accelerator of a run: process group, precision and DeepSpeed settings derived from its config.

`accelerate launch --config_file accelerate_configs/<name>.yaml` chooses the backend (DDP, FSDP,
DeepSpeed ZeRO stage and offload); everything that depends on the training flags (micro-batch,
gradient accumulation, clipping, precision) is derived here, before the engine is built. The
run's training backend (backend/) is then chosen from the Accelerator this returns.
"""

import logging
import os

import torch
from accelerate import Accelerator, DeepSpeedPlugin, InitProcessGroupKwargs
from accelerate.state import AcceleratorState

from .config import OptimConfig
from .precision import mixed_precision as mixed_precision_of

logger = logging.getLogger(__name__)


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_plugin(optim: OptimConfig, micro_batch_size: int) -> DeepSpeedPlugin:
    """DeepSpeed settings of this run. ZeRO stage and offload come from the accelerate config
    (`accelerate launch` exports them); gradient accumulation and clipping from `optim`. The
    micro-batch is what one process consumes per micro-step: one interleaved batch plus one
    LAION batch (TrainConfig.micro_batch_size). Precision follows --precision through `mixed_precision`
    (DeepSpeed keeps float32 master weights for both bf16 flags)."""
    plugin = DeepSpeedPlugin(
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        gradient_clipping=optim.max_grad_norm,
    )
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    return plugin


def make_accelerator(
    optim: OptimConfig, micro_batch_size: int, project_dir: str, *, report_to_wandb: bool = False
) -> Accelerator:
    mixed_precision = mixed_precision_of(optim.precision)
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != mixed_precision:
        logger.warning(
            "The accelerate config asks for mixed_precision=%s; --precision %s wins (%s).",
            launched,
            optim.precision,
            mixed_precision,
        )
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    handlers = []
    if not torch.cuda.is_available() and launched_processes > 1:
        # multi-process CPU runs (tests, the demo): a gloo process group
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # accelerate keeps one mixed precision per Python process. A run started after another in
    # the same process (a notebook, a test, a benchmark sweep) sets its own; the process group
    # (PartialState) is kept.
    AcceleratorState._reset_state()
    plugin = deepspeed_plugin(optim, micro_batch_size) if using_deepspeed() else None
    if plugin is not None and optim.precision == "bf16":
        mixed_precision = "bf16"
    accelerator = Accelerator(
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        deepspeed_plugin=plugin,
        log_with="wandb" if report_to_wandb else None,
        kwargs_handlers=handlers,
        project_dir=project_dir,
    )
    if launched_processes > 1 and accelerator.distributed_type.name == "NO":
        # e.g. the FSDP config on a machine without GPUs: accelerate sets up no process group
        # and every process would train alone, unsynchronised, writing the same checkpoints.
        raise SystemExit(
            f"{launched_processes} processes were launched, but accelerate set up no "
            f"distributed backend for them (on {accelerator.device}): the launch config's "
            "backend is not available on this machine. FSDP needs GPUs; on CPU use the ddp or "
            "zero1 configs."
        )
    return accelerator

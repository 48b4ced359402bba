"""The Accelerator of a run: process group, precision and DeepSpeed settings derived from the flags.

`accelerate launch --config_file accelerate_configs/<name>.yaml` chooses the backend (DDP, FSDP,
DeepSpeed ZeRO stage and offload); everything that depends on the training flags (micro-batch,
gradient accumulation, clipping, precision) is derived here, before the engine is built.
"""

import logging
import os

import torch
from accelerate import Accelerator, DeepSpeedPlugin, InitProcessGroupKwargs
from accelerate.state import AcceleratorState

from .precision import PRECISION

logger = logging.getLogger(__name__)


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def optimizer_offloaded() -> bool:
    """The launch config offloads DeepSpeed's optimizer to CPU (the *_slurm / offload configs)."""
    device = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    return using_deepspeed() and device == "cpu"


def deepspeed_plugin(args) -> DeepSpeedPlugin:
    """DeepSpeed settings of this run. ZeRO stage and offload come from the accelerate config
    (`accelerate launch` exports them); gradient accumulation, clipping and the micro-batch from
    the flags. The micro-batch is what one process consumes per micro-step: one interleaved
    batch plus one LAION batch. Precision follows --precision through `mixed_precision`
    (DeepSpeed keeps float32 master weights for both bf16 flags)."""
    plugin = DeepSpeedPlugin(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_clipping=args.max_grad_norm,
    )
    micro_batch = args.batch_size_interleaved + args.batch_size_laion
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
    return plugin


def make_accelerator(args, project_dir: str) -> Accelerator:
    mixed_precision, _ = PRECISION[args.precision]
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != mixed_precision:
        logger.warning(
            "The accelerate config asks for mixed_precision=%s; --precision %s wins (%s).",
            launched,
            args.precision,
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
    plugin = deepspeed_plugin(args) if using_deepspeed() else None
    if plugin is not None and args.precision == "bf16":
        mixed_precision = "bf16"
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        deepspeed_plugin=plugin,
        log_with="wandb" if args.report_to_wandb else None,
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

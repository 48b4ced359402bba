"""The body of a training run: flags -> checks -> model, data, optimizer -> resume -> the loop.
The command line is train_omnicorpus.py (and OpenFlamingo's train.py), which first makes sure
the training extra is installed."""

import logging
import math
from pathlib import Path

from accelerate.utils import set_seed

from open_flamingo.cli import configure_logging
from open_flamingo.data.loader import get_data
from open_flamingo.data.storage import StorageError
from open_flamingo.src.checkpoint import load_checkpoint
from open_flamingo.src.checkpoint_fit import CheckpointMismatchError
from open_flamingo.src.factory import create_model_and_transforms
from open_flamingo.train.args import parse_config
from open_flamingo.train.backend import choose_backend
from open_flamingo.train.checkpoint_io import CheckpointError, CheckpointWriteError
from open_flamingo.train.checkpointing import (
    NonFiniteWeightsError,
    check_pretrained,
    load_training_checkpoint,
)
from open_flamingo.train.config import TrainConfig
from open_flamingo.train.distributed import make_accelerator
from open_flamingo.train.feeds import make_feed, mixture_loaders
from open_flamingo.train.loop import NonFiniteLossError, Trainer, TrainerState
from open_flamingo.train.optim import build_optimizer, build_scheduler
from open_flamingo.train.preemption import StopRequest
from open_flamingo.train.preflight import count_problems
from open_flamingo.train.run_folder import (
    choose_resume,
    claim_run_folder,
    data_order,
    remove_unused_run_folder,
)

logger = logging.getLogger(__name__)


def build_loaders(config: TrainConfig, image_processor, tokenizer, accelerator) -> dict:
    """One loader per corpus, or per source of a mixture; their counts were checked before the
    model loaded (preflight)."""
    world_size, rank = accelerator.num_processes, accelerator.process_index
    if config.mixture is not None:
        return mixture_loaders(
            config.mixture, image_processor, tokenizer, rank=rank, world_size=world_size
        )
    return {
        name: get_data(
            corpus, image_processor, tokenizer, rank=rank, world_size=world_size
        ).dataloader
        for name, corpus in (("interleaved", config.interleaved), ("laion", config.laion))
    }


def stepping_optimizer_name(optimizer) -> str:
    """The class that updates the weights, under accelerate's and DeepSpeed's wrappers (with
    the optimizer offloaded, DeepSpeed replaces the AdamW it is given by its CPU Adam)."""
    inner = optimizer
    while getattr(inner, "optimizer", inner) is not inner:
        inner = inner.optimizer
    return type(inner).__name__


def run(argv=None) -> int:
    """Train as the flags `argv` say; returns the exit status."""
    config = parse_config(argv)
    run_dir = config.checkpoint.run_dir
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(
        config.optim,
        config.micro_batch_size,
        str(run_dir),
        report_to_wandb=config.logging.report_to_wandb,
    )
    configure_logging(
        accelerator.is_main_process, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # parse_config counted batches for the launch's WORLD_SIZE; these are the processes that run
    problems = count_problems(config, accelerator.num_processes)
    if problems:
        raise SystemExit(f"error: {' '.join(problems)}")
    set_seed(config.seed)
    # Before the model loads: one run per folder, and no untrusted or non-finite start weights.
    resuming = bool(config.checkpoint.resume_from_checkpoint)
    lock = claim_run_folder(accelerator, run_dir, resuming=resuming)
    finished = False
    try:
        if config.model.load_from_pretrained:
            check_pretrained(config.model.load_from_pretrained)
        with StopRequest() as stop:
            status = _train(config, accelerator, run_dir, stop)
        finished = True
        return status
    except (CheckpointError, CheckpointWriteError, NonFiniteLossError, NonFiniteWeightsError) as e:
        raise SystemExit(f"error: {e}") from None
    except StorageError as e:  # the training data's storage (attempts and timeouts: data/s3.py)
        raise SystemExit(f"error: the training data cannot be read: {e}") from None
    finally:
        lock.release()
        if not finished and new_folder and accelerator.is_main_process:
            remove_unused_run_folder(run_dir)


def _train(config: TrainConfig, accelerator, run_dir: Path, stop: StopRequest) -> int:
    """Build the model, the data and the optimizer, resume if asked, and train. Returns the
    exit status: 0, or REQUEUE_EXIT_CODE after a stop signal."""
    model_config, optim = config.model, config.optim
    backend = choose_backend(accelerator)
    model, image_processor, tokenizer = create_model_and_transforms(
        model_config.vision_encoder_path,
        model_config.vision_encoder_pretrained,
        model_config.lm_path,
        model_config.tokenizer_path,
        cross_attn_every_n_layers=model_config.cross_attn_every_n_layers,
        decoder_layers_attr_name=model_config.decoder_layers_attr_name,
        freeze_lm_embeddings=model_config.freeze_lm_embeddings,
        gradient_checkpointing=model_config.gradient_checkpointing,
        trust_remote_code=model_config.trust_remote_code,
    )
    if model_config.load_from_pretrained:
        try:
            load_checkpoint(model, model_config.load_from_pretrained)
        except CheckpointMismatchError as error:
            raise SystemExit(
                f"--load_from_pretrained {model_config.load_from_pretrained}: {error}"
            ) from None
    trained_rows = (
        None if model_config.freeze_lm_embeddings else [model.media_token_id, model.eoc_token_id]
    )
    backend.prepare_model(model, optim.precision, trainable_embedding_rows=trained_rows)

    loaders = build_loaders(config, image_processor, tokenizer, accelerator)
    feed = make_feed(config, loaders)
    batches = optim.num_epochs * feed.num_batches
    total_steps = math.floor(batches / optim.gradient_accumulation_steps)
    optimizer = build_optimizer(
        model,
        optim.learning_rate,
        optim.weight_decay,
        cpu_offload=backend.optimizer_offloaded,
        device=accelerator.device,
    )
    scheduler = build_scheduler(optimizer, optim.lr_scheduler, optim.warmup_steps, total_steps)
    model, optimizer = backend.wrap(model, optimizer)

    order = data_order(config, accelerator.num_processes, loaders)
    state = TrainerState(data_order=order)
    resume = config.checkpoint.resume_from_checkpoint
    if resume:
        path = choose_resume(accelerator, resume, run_dir, order)
        if path is None:
            logger.info("no checkpoint in %s yet: starting from scratch", run_dir)
        else:
            logger.info("resuming from %s", path)
            saved = load_training_checkpoint(
                backend, model, optimizer, scheduler, feed.stateful(), path
            )
            state = TrainerState(**saved)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    processes = accelerator.num_processes
    logger.info(
        "%s on %d process%s (%s), %d trainable parameters, %d batches per epoch, "
        "%d optimizer steps of %s",
        backend.name,
        processes,
        "es" if processes > 1 else "",
        accelerator.device,
        n_trainable,
        feed.num_batches,
        total_steps,
        stepping_optimizer_name(optimizer),
    )
    trainer = Trainer(
        config, backend, model, optimizer, scheduler, loaders, run_dir, state, stop, feed=feed
    )
    return trainer.train()

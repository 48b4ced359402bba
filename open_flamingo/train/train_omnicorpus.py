"""OmniCorpus-style OpenFlamingo pre-training: interleaved documents + LAION pairs.

    accelerate launch --config_file accelerate_configs/accelerate_config_zero1_slurm.yaml \\
        open_flamingo/train/train_omnicorpus.py --lm_path ... --omnicorpus_shards s3://... ...

Every flag is honoured or rejected (open_flamingo/train/args.py); `main(argv)` can be called
from a test with a list of flags.
"""

import logging
import math
import sys
from pathlib import Path

from accelerate.utils import set_seed

from open_flamingo.data.loader import get_data
from open_flamingo.src.checkpoint import load_checkpoint
from open_flamingo.src.factory import create_model_and_transforms
from open_flamingo.train.args import parse_args
from open_flamingo.train.checkpointing import load_training_checkpoint, resolve_resume
from open_flamingo.train.distributed import make_accelerator, optimizer_offloaded
from open_flamingo.train.fsdp import uses_fsdp
from open_flamingo.train.loop import Trainer, TrainerState, embedding_gradient_mask
from open_flamingo.train.optim import build_optimizer, build_scheduler
from open_flamingo.train.precision import cast_for_precision

logger = logging.getLogger("open_flamingo.train")


def build_loaders(args, image_processor, tokenizer, accelerator) -> dict:
    args.world_size, args.rank = accelerator.num_processes, accelerator.process_index
    loaders = {
        "interleaved": get_data(
            args, image_processor, tokenizer, args.interleaved_dataset
        ).dataloader,
        "laion": get_data(args, image_processor, tokenizer, args.laion_dataset).dataloader,
    }
    if len(loaders["interleaved"]) != len(loaders["laion"]):
        per_batch = args.batch_size_laion * args.world_size
        raise SystemExit(
            "Each step takes one interleaved and one LAION batch, so both corpora need the same "
            f"number of batches per epoch: interleaved has {len(loaders['interleaved'])}, LAION "
            f"{len(loaders['laion'])}. Set --train_num_samples_laion to "
            f"{len(loaders['interleaved']) * per_batch}."
        )
    return loaders


def stepping_optimizer_name(optimizer) -> str:
    """The class that updates the weights, under accelerate's and DeepSpeed's wrappers (with
    the optimizer offloaded, DeepSpeed replaces the AdamW it is given by its CPU Adam)."""
    inner = optimizer
    while getattr(inner, "optimizer", inner) is not inner:
        inner = inner.optimizer
    return type(inner).__name__


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.external_save_dir or ".") / args.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(args, str(run_dir))
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    set_seed(args.seed)

    model, image_processor, tokenizer = create_model_and_transforms(
        args.vision_encoder_path,
        args.vision_encoder_pretrained,
        args.lm_path,
        args.tokenizer_path,
        cross_attn_every_n_layers=args.cross_attn_every_n_layers,
        decoder_layers_attr_name=args.decoder_layers_attr_name,
        freeze_lm_embeddings=args.freeze_lm_embeddings,
        gradient_checkpointing=args.gradient_checkpointing,
        trust_remote_code=args.trust_remote_code,
    )
    if args.load_from_pretrained:
        load_checkpoint(model, args.load_from_pretrained)
    trained_rows = None if args.freeze_lm_embeddings else [model.media_token_id, model.eoc_token_id]
    if trained_rows and not uses_fsdp(accelerator):  # FSDP: TrainStep masks the sharded gradient
        embedding_gradient_mask(model, trained_rows)
    cast_for_precision(model, args.precision, accelerator.distributed_type.name)

    loaders = build_loaders(args, image_processor, tokenizer, accelerator)
    batches = args.num_epochs * len(loaders["interleaved"])
    total_steps = math.floor(batches / args.gradient_accumulation_steps)
    if total_steps < 1:
        raise SystemExit(
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} exceeds the "
            f"{batches} batches of the run: no optimizer step would be taken. Lower it, or raise "
            "--num_epochs / --train_num_samples_interleaved / --train_num_samples_laion."
        )
    optimizer = build_optimizer(
        model,
        args.learning_rate,
        args.weight_decay,
        cpu_offload=optimizer_offloaded(),
        device=accelerator.device,
    )
    scheduler = build_scheduler(optimizer, args.lr_scheduler, args.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = TrainerState()
    if args.resume_from_checkpoint:
        path = resolve_resume(args.resume_from_checkpoint, run_dir)
        if path is None:
            logger.info("no checkpoint in %s yet: starting from scratch", run_dir)
        else:
            logger.info("resuming from %s", path)
            saved = load_training_checkpoint(
                accelerator, model, optimizer, scheduler, loaders, path
            )
            state = TrainerState(**saved)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s on %d processes (%s), %d trainable parameters, %d batches per epoch, "
        "%d optimizer steps of %s",
        accelerator.distributed_type.value,
        accelerator.num_processes,
        accelerator.device,
        n_trainable,
        len(loaders["interleaved"]),
        total_steps,
        stepping_optimizer_name(optimizer),
    )
    sharded_rows = trained_rows if uses_fsdp(accelerator) else None
    Trainer(
        args, accelerator, model, optimizer, scheduler, loaders, run_dir, state, sharded_rows
    ).train()
    return 0


if __name__ == "__main__":
    sys.exit(main())

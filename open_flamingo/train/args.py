"""Command-line flags of the training scripts: OmniCorpus's and OpenFlamingo's, each honoured or
rejected with a clear message."""

import argparse
import math
from pathlib import Path

from .checkpointing import LATEST, TRAINER_STATE, is_complete

PRECISIONS = ("fp32", "bf16", "amp_bf16", "fp16")
SCHEDULERS = ("constant", "linear", "cosine")
INTERLEAVED_TYPES = ("omnicorpus", "obelics", "mmc4", "mmc4_wds")
PAIR_TYPES = ("laion", "laion_table")


def _steps(text: str) -> list[int]:
    """`--special_checkpointing_steps 100,500 1000` -> [100, 500, 1000]."""
    return [int(part) for part in text.replace(",", " ").split()]


def build_parser(
    description: str = "OmniCorpus-style OpenFlamingo pre-training",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    model = parser.add_argument_group("model")
    model.add_argument("--vision_encoder_path", default="ViT-L-14", help="open_clip model name")
    model.add_argument(
        "--vision_encoder_pretrained",
        default="openai",
        help="open_clip pretrained tag, a local weights file, or 'none' for random init",
    )
    model.add_argument("--lm_path", required=True, help="Hugging Face id, folder or .gguf file")
    model.add_argument("--tokenizer_path", default=None, help="defaults to --lm_path")
    model.add_argument("--cross_attn_every_n_layers", type=int, default=1)
    model.add_argument("--decoder_layers_attr_name", default=None)
    model.add_argument("--trust_remote_code", action="store_true")
    model.add_argument("--freeze_lm_embeddings", action="store_true")
    model.add_argument(
        "--gradient_checkpointing",
        nargs="?",
        const="full",
        default=None,
        choices=("full", "selective"),
        help="recompute activations in backward: 'full' (the default when given without a "
        "value, as upstream) reruns whole layers; 'selective' recomputes only elementwise ops",
    )
    model.add_argument(
        "--load_from_pretrained",
        default=None,
        help="an OpenFlamingo checkpoint (checkpoint.pt) to start from; not a resume",
    )

    data = parser.add_argument_group("data")
    data.add_argument("--interleaved_dataset", choices=INTERLEAVED_TYPES, default="omnicorpus")
    data.add_argument("--laion_dataset", choices=PAIR_TYPES, default="laion")
    for corpus in ("omnicorpus", "obelics", "mmc4", "laion"):
        data.add_argument(
            f"--{corpus}_shards",
            default=None,
            help=f"{corpus} shards: folder, s3://bucket/prefix, manifest or brace pattern",
        )
        data.add_argument(
            f"--{corpus}_image_prefix",
            default=None,
            help=f"where {corpus} images referenced by URL / name are stored",
        )
    # OpenFlamingo's own train.py names the interleaved corpus "mmc4"; both names work.
    data.add_argument("--batch_size_interleaved", "--batch_size_mmc4", type=int, default=8)
    data.add_argument("--batch_size_laion", type=int, default=16)
    data.add_argument("--max_tokens_interleaved", type=int, default=1024)
    data.add_argument("--max_tokens_laion", type=int, default=128)
    data.add_argument(
        "--train_num_samples_interleaved", "--train_num_samples_mmc4", type=int, default=10000
    )
    data.add_argument("--train_num_samples_laion", type=int, default=20000)
    data.add_argument(
        "--loss_multiplier_interleaved", "--loss_multiplier_mmc4", type=float, default=1.0
    )
    data.add_argument("--loss_multiplier_laion", type=float, default=0.2)
    data.add_argument("--mmc4_max_num_images", type=int, default=6)
    data.add_argument("--mmc4_textsim_threshold", type=float, default=0.24)
    data.add_argument("--dataset_resampled", action="store_true")
    data.add_argument(
        "--workers", type=int, default=4, help="data-loader workers per corpus and rank"
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=1e-4)
    optim.add_argument("--lr_scheduler", choices=SCHEDULERS, default="constant")
    optim.add_argument("--warmup_steps", type=int, default=5000)
    optim.add_argument("--weight_decay", type=float, default=0.1)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--precision", choices=PRECISIONS, default="amp_bf16")
    optim.add_argument("--num_epochs", type=int, default=1)
    optim.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("run, checkpoints and logging")
    run.add_argument("--run_name", default="openflamingo")
    run.add_argument(
        "--external_save_dir",
        default=None,
        help="parent folder of the run folder (default: the current folder)",
    )
    run.add_argument("--checkpointing_steps", type=int, default=1000)
    run.add_argument(
        "--special_checkpointing_steps",
        type=_steps,
        default=[],
        help="extra steps to checkpoint at (kept even with --delete_previous_checkpoint)",
    )
    run.add_argument("--delete_previous_checkpoint", action="store_true")
    run.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder, or 'latest' (the newest complete one of this run)",
    )
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--report_to_wandb", action="store_true")
    run.add_argument("--wandb_project", default=None)
    run.add_argument("--wandb_entity", default=None)
    run.add_argument("--offline", action="store_true", help="wandb in offline mode")
    run.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="accelerator peak (dense bf16) for MFU; known GPUs are looked up",
    )
    for flag in UPSTREAM_DISTRIBUTED_FLAGS:
        run.add_argument(flag, nargs="?", action=_LaunchConfigFlag, help=argparse.SUPPRESS)
    return parser


# OpenFlamingo's torchrun-era flags: here the distributed set-up is accelerate's.
UPSTREAM_DISTRIBUTED_FLAGS = (
    "--fsdp",
    "--fsdp_use_orig_params",
    "--fsdp_sharding_strategy",
    "--horovod",
    "--dist-url",
    "--dist-backend",
    "--no-set-device-rank",
    "--save_checkpoints_to_wandb",
)


class _LaunchConfigFlag(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            f"{option_string} is not a flag of this trainer: the distributed set-up comes from "
            "`accelerate launch --config_file accelerate_configs/<ddp|fsdp|zero1|...>.yaml`."
        )


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Reject combinations that cannot be honoured, with what to do instead."""
    positive = [
        "batch_size_interleaved",
        "batch_size_laion",
        "max_tokens_interleaved",
        "max_tokens_laion",
        "train_num_samples_interleaved",
        "train_num_samples_laion",
        "gradient_accumulation_steps",
        "num_epochs",
        "checkpointing_steps",
        "logging_steps",
        "cross_attn_every_n_layers",
        "mmc4_max_num_images",
    ]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    for name in ("workers", "warmup_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if any(step < 1 for step in args.special_checkpointing_steps):
        parser.error("--special_checkpointing_steps must be >= 1 (optimizer steps count from 1)")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32) (got {args.seed})")
    if args.learning_rate <= 0 or not math.isfinite(args.learning_rate):
        parser.error("--learning_rate must be a positive number")
    for name in ("max_grad_norm", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and not 0 < value < math.inf:
            parser.error(f"--{name} must be a positive number (got {value})")
    for name in (
        "weight_decay",
        "loss_multiplier_interleaved",
        "loss_multiplier_laion",
        "mmc4_textsim_threshold",
    ):
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name} must be a finite number (got {getattr(args, name)})")
    if args.weight_decay < 0:
        parser.error("--weight_decay must be >= 0")
    if args.loss_multiplier_interleaved < 0 or args.loss_multiplier_laion < 0:
        parser.error("loss multipliers must be >= 0")
    if args.loss_multiplier_interleaved == 0 and args.loss_multiplier_laion == 0:
        parser.error("both loss multipliers are 0: nothing would be trained")
    if args.wandb_project is None and args.report_to_wandb:
        parser.error("--report_to_wandb needs --wandb_project")
    if (args.wandb_entity or args.offline) and not args.report_to_wandb:
        parser.error("--wandb_entity / --offline only apply with --report_to_wandb")
    if args.resume_from_checkpoint and args.load_from_pretrained:
        parser.error(
            "--resume_from_checkpoint continues a run (weights, optimizer, data position); "
            "--load_from_pretrained starts a new one from weights. Use one."
        )
    resume = args.resume_from_checkpoint
    if resume and resume != LATEST and not is_complete(Path(resume)):
        parser.error(
            f"--resume_from_checkpoint {resume} is not a checkpoint folder of this trainer (no "
            f"{TRAINER_STATE}): pass <run>/checkpoint-<step> or '{LATEST}'; to start from "
            "released weights use --load_from_pretrained"
        )
    if args.load_from_pretrained and not Path(args.load_from_pretrained).is_file():
        parser.error(f"--load_from_pretrained {args.load_from_pretrained}: no such file")
    interleaved_base = args.interleaved_dataset.removesuffix("_wds")
    laion_base = args.laion_dataset.removesuffix("_table")
    if getattr(args, f"{interleaved_base}_shards") is None:
        parser.error(
            f"--interleaved_dataset {args.interleaved_dataset} needs --{interleaved_base}_shards"
        )
    if getattr(args, f"{laion_base}_shards") is None:
        parser.error(f"--laion_dataset {args.laion_dataset} needs --{laion_base}_shards")
    if args.tokenizer_path is None:
        args.tokenizer_path = args.lm_path
    if str(args.vision_encoder_pretrained).lower() == "none":
        args.vision_encoder_pretrained = None
    return args


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    return validate(parser.parse_args(argv), parser)

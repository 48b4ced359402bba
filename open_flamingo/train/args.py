"""Command-line flags of the training scripts: OmniCorpus's and OpenFlamingo's, each honoured or
rejected with a clear message. The flags only OmniCorpus has, and how they map onto these, are
in omnicorpus_flags.py. Their defaults are the run settings' (config.py); `parse_config` turns a
command line into a TrainConfig."""

import argparse
import math

from open_flamingo.cli import exit_with_problems
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.formats import get_format
from open_flamingo.src.pretrained_paths import open_clip_pretrained

from . import omnicorpus_flags, preflight
from .checkpointing import LATEST
from .config import (
    CheckpointConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    corpus_configs,
    from_flags,
)
from .mixture import MixtureError, mixture_from_flags

PRECISIONS = ("fp32", "bf16", "amp_bf16", "amp_bfloat16", "fp16")
SCHEDULERS = ("constant", "linear", "cosine")
# OmniCorpus's names of two of them (omnicorpus_w_similarities, laionen2b) are accepted too.
INTERLEAVED_TYPES = (
    "omnicorpus",
    "obelics",
    "omnicorpus_sim",
    "omnicorpus_w_similarities",
    "mmc4",
    "mmc4_wds",
)
PAIR_TYPES = ("laion", "laion_table", "laionen2b")


def _steps(text: str) -> list[int]:
    """`--special_checkpointing_steps 100,500 1000` -> [100, 500, 1000]."""
    return [int(part) for part in text.replace(",", " ").split()]


def build_parser(
    description: str = "OmniCorpus-style OpenFlamingo pre-training",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--vision_encoder_path",
        default=ModelConfig.vision_encoder_path,
        help="open_clip model name",
    )
    model.add_argument(
        "--vision_encoder_pretrained",
        type=open_clip_pretrained,
        default=ModelConfig.vision_encoder_pretrained,
        help="open_clip pretrained tag, a local weights file, or 'none' for random init",
    )
    model.add_argument("--lm_path", required=True, help="Hugging Face id, folder or .gguf file")
    model.add_argument("--tokenizer_path", default=None, help="defaults to --lm_path")
    model.add_argument(
        "--cross_attn_every_n_layers",
        type=int,
        default=ModelConfig.cross_attn_every_n_layers,
        help="a gated cross-attention block before every n-th decoder layer (released models: "
        "3B 1, 4B 2, 9B 4)",
    )
    model.add_argument(
        "--decoder_layers_attr_name",
        default=None,
        help="dotted path of the LM's decoder layers, for families the registry does not know",
    )
    model.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the LM folder's own code (not needed for MosaicGPT / MPT, loaded natively)",
    )
    model.add_argument(
        "--freeze_lm_embeddings",
        action="store_true",
        help="keep the <image> / <|endofchunk|> embedding rows frozen too",
    )
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
    data.add_argument(
        "--interleaved_dataset", choices=INTERLEAVED_TYPES, default=None, help="default: omnicorpus"
    )
    data.add_argument("--laion_dataset", choices=PAIR_TYPES, default=None, help="default: laion")
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
    data.add_argument(
        "--batch_size_interleaved",
        "--batch_size_mmc4",
        type=int,
        default=8,
        help="interleaved documents per micro-step and process",
    )
    data.add_argument(
        "--batch_size_laion",
        type=int,
        default=16,
        help="image-text pairs per micro-step and process",
    )
    data.add_argument(
        "--max_tokens_interleaved", type=int, default=1024, help="tokens per document (truncated)"
    )
    data.add_argument(
        "--max_tokens_laion", type=int, default=128, help="tokens per caption (truncated)"
    )
    data.add_argument(
        "--train_num_samples_interleaved",
        "--train_num_samples_mmc4",
        type=int,
        default=10000,
        help="interleaved documents per epoch, all processes together",
    )
    data.add_argument(
        "--train_num_samples_laion",
        type=int,
        default=20000,
        help="pairs per epoch, all processes together (both corpora need as many batches)",
    )
    data.add_argument(
        "--loss_multiplier_interleaved",
        "--loss_multiplier_mmc4",
        type=float,
        default=OptimConfig.loss_multiplier_interleaved,
        help="weight of the interleaved loss in the step's loss",
    )
    data.add_argument(
        "--loss_multiplier_laion",
        type=float,
        default=OptimConfig.loss_multiplier_laion,
        help="weight of the LAION loss in the step's loss",
    )
    data.add_argument(
        "--mmc4_max_num_images",
        type=int,
        default=CorpusConfig.max_num_images,
        help="images kept per interleaved document",
    )
    data.add_argument(
        "--mmc4_textsim_threshold",
        type=float,
        default=CorpusConfig.sim_threshold,
        help="MMC4 and OmniCorpus with similarities: least image-sentence similarity of a match",
    )
    data.add_argument(
        "--dataset_resampled",
        action="store_true",
        help="each pass over the data is one shard drawn with replacement",
    )
    data.add_argument(
        "--workers", type=int, default=4, help="data-loader workers per corpus and rank"
    )
    data.add_argument(
        "--mixture",
        default=None,
        help="a YAML / JSON file of sources (type, shards, weight, batch size, ...) to train on "
        "instead of the two corpora above: docs/training.md",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--learning_rate", type=float, default=OptimConfig.learning_rate, help="peak learning rate"
    )
    optim.add_argument(
        "--lr_scheduler",
        choices=SCHEDULERS,
        default=OptimConfig.lr_scheduler,
        help="after the warm-up",
    )
    optim.add_argument(
        "--warmup_steps",
        type=int,
        default=OptimConfig.warmup_steps,
        help="linear warm-up, in optimizer steps",
    )
    optim.add_argument(
        "--weight_decay",
        type=float,
        default=OptimConfig.weight_decay,
        help="AdamW's, on the gated cross-attention weights only (no gates, norms, biases), as upstream",
    )
    optim.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=OptimConfig.gradient_accumulation_steps,
        help="micro-steps per optimizer step",
    )
    optim.add_argument(
        "--max_grad_norm",
        type=float,
        default=OptimConfig.max_grad_norm,
        help="gradients are clipped to this global norm",
    )
    optim.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=OptimConfig.precision,
        help="upstream's names; wins over the accelerate config's mixed_precision",
    )
    optim.add_argument(
        "--num_epochs", type=int, default=OptimConfig.num_epochs, help="epochs to train"
    )
    optim.add_argument(
        "--seed", type=int, default=TrainConfig.seed, help="model init, data order and RNG streams"
    )

    run = parser.add_argument_group("run, checkpoints and logging")
    run.add_argument(
        "--run_name",
        default=LoggingConfig.run_name,
        help="the run folder's name, under --external_save_dir; also the wandb run's",
    )
    run.add_argument(
        "--external_save_dir",
        default=None,
        help="parent folder of the run folder (default: the current folder)",
    )
    run.add_argument(
        "--checkpointing_steps",
        type=int,
        default=CheckpointConfig.checkpointing_steps,
        help="save a checkpoint every this many optimizer steps (and at the end)",
    )
    run.add_argument(
        "--special_checkpointing_steps",
        type=_steps,
        nargs="+",
        default=[],
        help="extra steps to checkpoint at (kept even with --delete_previous_checkpoint); "
        "`100 500`, as OmniCorpus, or `100,500`",
    )
    run.add_argument(
        "--delete_previous_checkpoint",
        action="store_true",
        help="keep only the newest checkpoint (and the --special_checkpointing_steps ones)",
    )
    run.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=LATEST,
        default=None,
        help="a checkpoint folder, or 'latest' (the newest complete one of this run; also what "
        "the flag means without a value, as in OmniCorpus)",
    )
    run.add_argument(
        "--logging_steps",
        type=int,
        default=LoggingConfig.logging_steps,
        help="a metrics.jsonl row (and wandb point) every this many optimizer steps",
    )
    run.add_argument("--report_to_wandb", action="store_true", help="also log to wandb")
    run.add_argument(
        "--wandb_project", default=None, help="wandb project (wandb's default if none)"
    )
    run.add_argument("--wandb_entity", default=None, help="wandb team or user")
    run.add_argument("--offline", action="store_true", help="wandb in offline mode")
    run.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="accelerator peak (dense bf16) for MFU; known GPUs are looked up",
    )
    run.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=OptimConfig.max_nonfinite_steps,
        help="stop the run (non-zero) after this many micro-steps in a row with a NaN or "
        "infinite loss or gradient; each one is skipped with a warning",
    )
    for flag in UPSTREAM_DISTRIBUTED_FLAGS:
        run.add_argument(flag, nargs="?", action=_LaunchConfigFlag, help=argparse.SUPPRESS)
    omnicorpus_flags.add_flags(parser)
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
)


class _LaunchConfigFlag(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            f"{option_string} is not a flag of this trainer: the distributed set-up comes from "
            "`accelerate launch --config_file accelerate_configs/<ddp|fsdp|zero1|...>.yaml`."
        )


def flag_problems(args: argparse.Namespace) -> list[str]:
    """Values and combinations of flags that cannot be honoured, with what to do instead."""
    problems = []
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
        "max_nonfinite_steps",
    ]
    problems += [
        f"--{name} must be >= 1 (got {getattr(args, name)})"
        for name in positive
        if getattr(args, name) < 1
    ]
    problems += [
        f"--{name} must be >= 0" for name in ("workers", "warmup_steps") if getattr(args, name) < 0
    ]
    if any(step < 1 for step in args.special_checkpointing_steps):
        problems.append("--special_checkpointing_steps must be >= 1 (optimizer steps count from 1)")
    if not 0 <= args.seed < 2**32:
        problems.append(f"--seed must be in [0, 2**32) (got {args.seed})")
    if args.learning_rate <= 0 or not math.isfinite(args.learning_rate):
        problems.append("--learning_rate must be a positive number")
    for name in ("max_grad_norm", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and not 0 < value < math.inf:
            problems.append(f"--{name} must be a positive number (got {value})")
    for name in (
        "weight_decay",
        "loss_multiplier_interleaved",
        "loss_multiplier_laion",
        "mmc4_textsim_threshold",
    ):
        if not math.isfinite(getattr(args, name)):
            problems.append(f"--{name} must be a finite number (got {getattr(args, name)})")
    if args.weight_decay < 0:
        problems.append("--weight_decay must be >= 0")
    if args.loss_multiplier_interleaved < 0 or args.loss_multiplier_laion < 0:
        problems.append("loss multipliers must be >= 0")
    if args.loss_multiplier_interleaved == 0 and args.loss_multiplier_laion == 0:
        problems.append("both loss multipliers are 0: nothing would be trained")
    if (args.wandb_entity or args.offline) and not args.report_to_wandb:
        problems.append("--wandb_entity / --offline only apply with --report_to_wandb")
    if args.resume_from_checkpoint and args.load_from_pretrained:
        problems.append(
            "--resume_from_checkpoint continues a run (weights, optimizer, data position); "
            "--load_from_pretrained starts a new one from weights. Use one."
        )
    two_corpora = zip(("interleaved", "laion"), corpus_configs(args), strict=True)
    for role, corpus in two_corpora if not args.mixture else ():  # a mixture's: mixture.py
        fmt = get_format(corpus.dataset_type)
        if corpus.shards is None:
            problems.append(
                f"--{role}_dataset {corpus.dataset_type} needs --{fmt.flag_base}_shards"
            )
        if fmt.needs_image_prefix and corpus.image_prefix is None:
            problems.append(
                f"--{role}_dataset {corpus.dataset_type} needs --{fmt.flag_base}_image_prefix: "
                "its records name images stored there"
            )
    return problems


def validate(
    args: argparse.Namespace, parser: argparse.ArgumentParser, *, look_at_files: bool = True
) -> argparse.Namespace:
    """Check the flags, then (`look_at_files`) every path and count they name (preflight.py),
    and exit with all the problems found, before anything loads."""
    omnicorpus_flags.apply(args, parser)
    args.special_checkpointing_steps = [
        step for group in args.special_checkpointing_steps for step in group
    ]
    if args.tokenizer_path is None:
        args.tokenizer_path = args.lm_path
    problems = flag_problems(args)
    try:
        mixture_from_flags(args)
    except MixtureError as error:  # without a readable spec there is no run to check further
        exit_with_problems(parser, [*problems, str(error)])
    if look_at_files:
        config = from_flags(args)
        problems += preflight.find_problems(
            config, preflight.launch_world_size(), counts=not problems
        )
    if problems:
        exit_with_problems(parser, problems)
    return args


def parse_flags(argv=None) -> argparse.Namespace:
    """What a command line means, its flags checked, without looking at the files and storage
    it names (a command written for another machine: docs/data.md's)."""
    parser = build_parser()
    return validate(parser.parse_args(argv), parser, look_at_files=False)


def parse_args(argv=None) -> argparse.Namespace:
    """The validated flags, OmniCorpus's mapped onto this trainer's, after every path and count
    they name has been checked."""
    parser = build_parser()
    return validate(parser.parse_args(argv), parser)


def parse_config(argv=None) -> TrainConfig:
    """The run a command line describes."""
    return from_flags(parse_args(argv))

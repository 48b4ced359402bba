"""A training run's settings: one typed, frozen dataclass per concern.

`TrainConfig` holds the model to build (`ModelConfig`), the two corpora (`CorpusConfig`, from
open_flamingo.data.config: the interleaved documents and the LAION pairs), the optimisation
(`OptimConfig`), the checkpoints (`CheckpointConfig`) and the logging (`LoggingConfig`). The
trainer, its step, the accelerator and the metrics read these fields. Their defaults are the
command line's: args.py takes its flags' defaults from here, and `from_flags` turns the parsed
flags into a TrainConfig, the one place that does.

The fields of ModelConfig, OptimConfig, CheckpointConfig and LoggingConfig are named as their
flags (`--max_grad_norm` is `OptimConfig.max_grad_norm`). The corpora's flags are per corpus
(`--batch_size_laion` is `TrainConfig.laion.batch_size`), mapped in `corpus_configs`.
"""

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.formats import get_format

from .mixture import MixtureConfig, mixture_from_flags


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What `create_model_and_transforms` builds, and the weights it starts from."""

    vision_encoder_path: str = "ViT-L-14"  # open_clip model name
    vision_encoder_pretrained: str | None = "openai"  # open_clip tag or weights file; None: random
    lm_path: str  # Hugging Face id, folder or .gguf file
    tokenizer_path: str
    cross_attn_every_n_layers: int = 1
    decoder_layers_attr_name: str | None = None
    trust_remote_code: bool = False
    freeze_lm_embeddings: bool = False
    gradient_checkpointing: str | None = None  # "full", "selective" or None
    load_from_pretrained: str | None = None  # an OpenFlamingo checkpoint.pt to start from


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """The optimizer, its schedule, precision, and how each micro-step's loss is formed."""

    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 5000
    weight_decay: float = 0.1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    precision: str = "amp_bf16"  # a key of precision.PRECISION
    num_epochs: int = 1
    loss_multiplier_interleaved: float = 1.0
    loss_multiplier_laion: float = 0.2
    max_nonfinite_steps: int = 5  # micro-steps in a row with a non-finite loss: then stop


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Where the run's checkpoints go, when, and which one it resumes from."""

    run_dir: Path  # <external_save_dir>/<run_name>
    checkpointing_steps: int = 1000
    special_checkpointing_steps: tuple[int, ...] = ()  # kept even with delete_previous_checkpoint
    delete_previous_checkpoint: bool = False
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest"


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    """metrics.jsonl, progress and wandb."""

    run_name: str = "openflamingo"
    logging_steps: int = 10
    report_to_wandb: bool = False
    wandb_project: str | None = None
    wandb_entity: str | None = None
    offline: bool = False  # wandb in offline mode
    save_checkpoints_to_wandb: bool = False
    peak_tflops: float | None = None  # for MFU; known GPUs are looked up
    flags: dict = field(default_factory=dict)  # every flag as parsed: the wandb run's config


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: ModelConfig
    interleaved: CorpusConfig
    laion: CorpusConfig
    optim: OptimConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    seed: int = 42
    # --mixture: its sources replace the two corpora above (mixture.py)
    mixture: MixtureConfig | None = None

    @property
    def micro_batch_size(self) -> int:
        """Samples one process consumes per micro-step: an interleaved and a LAION batch (in a
        mixture: its pair batches and the largest drawn batch)."""
        if self.mixture is not None:
            return self.mixture.micro_batch_size
        return self.interleaved.batch_size + self.laion.batch_size


def _locations(args: argparse.Namespace, dataset_type: str) -> tuple[str | None, str | None]:
    """(shards, image prefix) of a dataset type: the flags of the corpus its name starts with
    (`--laion_shards` for laion_table, `--omnicorpus_shards` for omnicorpus_sim)."""
    return {
        "omnicorpus": (args.omnicorpus_shards, args.omnicorpus_image_prefix),
        "obelics": (args.obelics_shards, args.obelics_image_prefix),
        "mmc4": (args.mmc4_shards, args.mmc4_image_prefix),
        "laion": (args.laion_shards, args.laion_image_prefix),
    }[get_format(dataset_type).flag_base]


def corpus_configs(args: argparse.Namespace) -> tuple[CorpusConfig, CorpusConfig]:
    """The (interleaved, LAION) corpora the flags describe."""
    shared = dict(workers=args.workers, seed=args.seed, resampled=args.dataset_resampled)
    interleaved_rules = dict(
        max_num_images=args.mmc4_max_num_images, sim_threshold=args.mmc4_textsim_threshold
    )
    corpora = []
    for dataset_type, batch_size, max_tokens, num_samples, rules in (
        (
            args.interleaved_dataset,
            args.batch_size_interleaved,
            args.max_tokens_interleaved,
            args.train_num_samples_interleaved,
            interleaved_rules,
        ),
        (
            args.laion_dataset,
            args.batch_size_laion,
            args.max_tokens_laion,
            args.train_num_samples_laion,
            {},
        ),
    ):
        shards, image_prefix = _locations(args, dataset_type)
        corpus = CorpusConfig(
            dataset_type=dataset_type,
            shards=shards,
            image_prefix=image_prefix,
            batch_size=batch_size,
            max_tokens=max_tokens,
            num_samples=num_samples,
            **rules,
            **shared,
        )
        corpora.append(corpus)
    interleaved, laion = corpora
    return interleaved, laion


def _namesakes(config_class, args: argparse.Namespace, **others):
    """`config_class` with each field but `others` taken from the flag of the same name."""
    taken = {f.name: getattr(args, f.name) for f in fields(config_class) if f.name not in others}
    return config_class(**taken, **others)


def from_flags(args: argparse.Namespace) -> TrainConfig:
    """The run that validated flags (args.parse_args) describe."""
    interleaved, laion = corpus_configs(args)
    checkpoint = _namesakes(
        CheckpointConfig,
        args,
        run_dir=Path(args.external_save_dir or ".") / args.run_name,
        special_checkpointing_steps=tuple(args.special_checkpointing_steps),
    )
    return TrainConfig(
        model=_namesakes(ModelConfig, args),
        interleaved=interleaved,
        laion=laion,
        optim=_namesakes(OptimConfig, args),
        checkpoint=checkpoint,
        logging=_namesakes(LoggingConfig, args, flags=dict(vars(args))),
        seed=args.seed,
        mixture=mixture_from_flags(args),
    )

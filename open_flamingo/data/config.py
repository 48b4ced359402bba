"""What the loader reads of one corpus and how it builds its batches: the argument of `get_data`.

The training CLI fills one per corpus (the interleaved documents and the LAION pairs) from its
flags, in open_flamingo/train/args.py; benchmarks and tests build them directly.
"""

from dataclasses import dataclass

from .mmc4 import MMC4_SIM_THRESHOLD

MAX_NUM_IMAGES = 6  # images per interleaved sample: upstream's --mmc4_max_num_images default


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """One corpus. The flag that sets each field in training is named after it."""

    # a type of open_flamingo.data.formats, or one of OmniCorpus's names for one
    # (--interleaved_dataset / --laion_dataset)
    dataset_type: str
    # folder, s3://bucket/prefix, manifest or brace pattern (--<corpus>_shards)
    shards: str | None
    # where the images its records name are stored (--<corpus>_image_prefix)
    image_prefix: str | None = None
    batch_size: int  # samples per batch and process (--batch_size_<role>)
    max_tokens: int  # tokens per sample: longer ones are cut, shorter padded (--max_tokens_<role>)
    num_samples: int  # samples per epoch over all processes (--train_num_samples_<role>)
    workers: int = 0  # DataLoader workers per process; 0 reads in the process itself (--workers)
    seed: int = 0  # shuffles shards and records; resampled draws (--seed)
    resampled: bool = False  # draw shards with replacement instead of passes (--dataset_resampled)
    # interleaved corpora: images kept per sample (--mmc4_max_num_images)
    max_num_images: int = MAX_NUM_IMAGES
    # MMC4-style corpora: least image-sentence similarity of a match (--mmc4_textsim_threshold)
    sim_threshold: float = MMC4_SIM_THRESHOLD

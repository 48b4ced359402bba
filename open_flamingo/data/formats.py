"""The corpus formats `get_data` understands, by dataset type."""

from dataclasses import dataclass
from typing import Literal

from .documents import (
    MMC4_MIN_IMAGE_BYTES,
    parse_laion_table,
    parse_laion_wds,
    parse_mmc4,
    parse_mmc4_wds,
    parse_omnicorpus,
)


def _omnicorpus(record, key, config, skips):
    return parse_omnicorpus(record, key, config.image_prefix)


def _mmc4(record, key, config, skips):
    return parse_mmc4(record, key, config.image_prefix, config.sim_threshold)


def _mmc4_wds(record, key, config, skips):
    return parse_mmc4_wds(record, key, config.sim_threshold, skips=skips)


def _laion_wds(record, key, config, skips):
    return parse_laion_wds(record, key)


def _laion_table(record, key, config, skips):
    return parse_laion_table(record, key, config.image_prefix)


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    kind: Literal["interleaved", "pairs"]
    # (record, key, StreamConfig, SkipCounter) -> InterleavedDoc | PairDoc; raises SkipSample
    parse: object
    min_image_bytes: int = 0
    single_image_drop_prob: float = 0.0
    needs_image_prefix: bool = False


FORMATS: dict[str, DatasetFormat] = {
    # OmniCorpus and OBELICS share one schema: parallel `images` / `texts` lists.
    "omnicorpus": DatasetFormat("omnicorpus", "interleaved", _omnicorpus, needs_image_prefix=True),
    "obelics": DatasetFormat("obelics", "interleaved", _omnicorpus, needs_image_prefix=True),
    "mmc4": DatasetFormat(
        "mmc4", "interleaved", _mmc4, MMC4_MIN_IMAGE_BYTES, 0.5, needs_image_prefix=True
    ),
    "mmc4_wds": DatasetFormat("mmc4_wds", "interleaved", _mmc4_wds, MMC4_MIN_IMAGE_BYTES, 0.5),
    "laion": DatasetFormat("laion", "pairs", _laion_wds),
    "laion_table": DatasetFormat("laion_table", "pairs", _laion_table, needs_image_prefix=True),
}


def get_format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise ValueError(f"Unknown dataset type {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]

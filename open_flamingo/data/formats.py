"""The corpus formats `get_data` understands, by dataset type, and what each reads.

| type | records | shard files | sample rules |
|---|---|---|---|
| omnicorpus, obelics | `images` / `texts` lists | JSON lines, `.json` arrays, parquet | OmniCorpus's |
| omnicorpus_sim | `sentences` / `matrix` / `images_info` | same | MMC4's, softmax first |
| mmc4 | `text_list` / `image_info` / `similarity_matrix` | same | MMC4's |
| mmc4_wds | OpenFlamingo's MMC4 webdataset | `.tar` | MMC4's |
| laion | img2dataset webdataset | `.tar` | pairs |
| laion_table | `url`/`URL` or `image`, `caption`/`TEXT`/`text` | JSON lines (`.txt` too), parquet | pairs |
| text | `text` (no images) | JSON lines, `.json` arrays, parquet | plain causal LM |

OmniCorpus's own type names work too: `laionen2b` (its LAION-En2B rows) is `laion_table`,
`omnicorpus_w_similarities` is `omnicorpus_sim`. A folder given as shards contributes only the
files of its type's suffixes, so img2dataset's `.parquet` / `_stats.json` sidecars beside its
tars are not read as records.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from . import storage
from .documents import (
    MMC4_MIN_IMAGE_BYTES,
    parse_laion_table,
    parse_laion_wds,
    parse_mmc4,
    parse_mmc4_wds,
    parse_omnicorpus,
    parse_omnicorpus_sim,
    parse_text,
)
from .samples import TextRule

JSON_SUFFIXES = (".jsonl.gz", ".jsonl.zip", ".jsonl", ".json", ".zip", ".parquet")
TABLE_SUFFIXES = (*JSON_SUFFIXES, ".txt")
TAR_SUFFIXES = (".tar",)
ALIASES = {"laionen2b": "laion_table", "omnicorpus_w_similarities": "omnicorpus_sim"}


def _omnicorpus(record, key, image_prefix, config, skips):
    return parse_omnicorpus(record, key, image_prefix)


def _omnicorpus_sim(record, key, image_prefix, config, skips):
    return parse_omnicorpus_sim(record, key, image_prefix, config.sim_threshold)


def _mmc4(record, key, image_prefix, config, skips):
    return parse_mmc4(record, key, image_prefix, config.sim_threshold)


def _mmc4_wds(record, key, image_prefix, config, skips):
    return parse_mmc4_wds(record, key, config.sim_threshold, skips=skips)


def _laion_wds(record, key, image_prefix, config, skips):
    return parse_laion_wds(record, key)


def _laion_table(record, key, image_prefix, config, skips):
    return parse_laion_table(record, key, image_prefix)


def _text(record, key, image_prefix, config, skips):
    return parse_text(record, key)


def _same_prefix(shard: str, image_prefix: str | None) -> str | None:
    return image_prefix


def mmc4_image_folder(shard: str, image_prefix: str | None) -> str | None:
    """Where the images of one MMC4 docs shard are. mmc4's download script writes one folder
    per docs shard by default, named after the shard file's stem (`docs_shard_3_v2.jsonl.zip`
    -> `docs_shard_3_v2.jsonl_images`, `docs_no_face_shard_3_v3.jsonl` ->
    `docs_no_face_shard_3_v3_images`); users also keep the bare stem or one flat folder. The
    first of those folders that exists under the image prefix is taken, else the prefix."""
    prefix = image_prefix
    if prefix is None:
        return None
    name = shard.replace("\\", "/").rstrip("/").rpartition("/")[2]
    stems = [name.rpartition(".")[0]]
    for suffix in (".jsonl.zip", ".jsonl.gz", ".jsonl", ".zip", ".json"):
        if name.lower().endswith(suffix):
            stems.append(name[: -len(suffix)])
            break
    root = storage.parse_location(prefix)
    for folder in [f"{stem}_images" for stem in stems] + stems:
        try:
            if folder and storage.has_files(root.join(folder)):
                return str(root.join(folder))
        except storage.StorageError:  # the image reads will meet (and count) it too
            break
    return prefix


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    kind: Literal["interleaved", "pairs", "text"]
    # (record, key, image prefix, StreamConfig, SkipCounter) -> document; raises SkipSample
    parse: Callable
    shard_suffixes: tuple[str, ...]
    min_image_bytes: int = 0
    single_image_drop_prob: float = 0.0
    needs_image_prefix: bool = False
    text_rule: TextRule = "openflamingo"
    # (shard URI, image prefix) -> the image prefix of that shard's documents
    image_prefix_for: Callable = _same_prefix

    @property
    def flag_base(self) -> str:
        """The corpus in the flag names: `--<base>_shards`, `--<base>_image_prefix`."""
        return self.name.split("_")[0]


_MMC4_RULES = dict(min_image_bytes=MMC4_MIN_IMAGE_BYTES, single_image_drop_prob=0.5)
FORMATS: dict[str, DatasetFormat] = {
    # OmniCorpus and OBELICS share one schema: parallel `images` / `texts` lists.
    "omnicorpus": DatasetFormat(
        "omnicorpus",
        "interleaved",
        _omnicorpus,
        JSON_SUFFIXES,
        needs_image_prefix=True,
        text_rule="omnicorpus",
    ),
    "obelics": DatasetFormat(
        "obelics",
        "interleaved",
        _omnicorpus,
        JSON_SUFFIXES,
        needs_image_prefix=True,
        text_rule="omnicorpus",
    ),
    "omnicorpus_sim": DatasetFormat(
        "omnicorpus_sim",
        "interleaved",
        _omnicorpus_sim,
        JSON_SUFFIXES,
        needs_image_prefix=True,
        **_MMC4_RULES,
    ),
    "mmc4": DatasetFormat(
        "mmc4",
        "interleaved",
        _mmc4,
        JSON_SUFFIXES,
        needs_image_prefix=True,
        image_prefix_for=mmc4_image_folder,
        **_MMC4_RULES,
    ),
    "mmc4_wds": DatasetFormat("mmc4_wds", "interleaved", _mmc4_wds, TAR_SUFFIXES, **_MMC4_RULES),
    "laion": DatasetFormat("laion", "pairs", _laion_wds, TAR_SUFFIXES),
    "laion_table": DatasetFormat(
        "laion_table", "pairs", _laion_table, TABLE_SUFFIXES, needs_image_prefix=True
    ),
    # Text only (a mixture's web text): no <image> token, no images, every token trained.
    "text": DatasetFormat("text", "text", _text, JSON_SUFFIXES),
}


def get_format(name: str) -> DatasetFormat:
    """The format of a dataset type (or of one of OmniCorpus's names for it, see ALIASES)."""
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        known = ", ".join([*FORMATS, *ALIASES])
        raise ValueError(f"Unknown dataset type {name!r}; known: {known}")
    return FORMATS[name]

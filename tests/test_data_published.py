"""Every corpus in the form its users download it, through `get_data`, from local disk and from a
real Ceph RGW: OmniCorpus / OBELICS as `.json` arrays, JSONL and parquet, OmniCorpus "with
similarities", MMC4 with one image folder per docs shard, an img2dataset output folder with its
sidecars, and OmniCorpus's LAION-En2B rows. One pass must give every usable record exactly once,
with exactly the expected tokens and image pixels, and count every skip it met (tests/
published_*.py build the corpora and the expectations from the published schemas)."""

import dataclasses
import io
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from published_interleaved import build_mmc4_per_shard, build_omnicorpus, build_with_similarities
from published_pairs import build_img2dataset, build_laionen2b, build_sidecars_only
from test_data_formats import same_stream, upload_dirs

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.formats import get_format
from open_flamingo.data.loader import get_data
from open_flamingo.data.shards import open_shard
from open_flamingo.data.skips import SkipCounter
from open_flamingo.data.stream import pass_parts, record_order
from open_flamingo.tools.convert_mmc4_to_wds import convert_mmc4_to_wds

MAX_TOKENS = {"interleaved": 256, "pairs": 64}


def build_published(root, eos: str) -> dict:
    """Every layout under `root`, by name."""
    layouts = build_omnicorpus(root, eos)
    layouts["omnicorpus_sim-jsonl"] = build_with_similarities(root, eos)
    layouts["mmc4-folder-per-shard"] = build_mmc4_per_shard(root, eos)
    layouts["laion-img2dataset"] = build_img2dataset(root, eos)
    layouts["laionen2b-txt"] = build_laionen2b(root, eos)
    return layouts


@pytest.fixture(scope="module")
def published(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("published")
    return root, build_published(root, tokenizer.eos_token)


LAYOUTS = [
    "omnicorpus-json",
    "omnicorpus-jsonl",
    "omnicorpus-parquet",
    "obelics-parquet",
    "omnicorpus_sim-jsonl",
    "mmc4-folder-per-shard",
    "laion-img2dataset",
    "laionen2b-txt",
]


def layout_config(layout, root: str, workers: int = 0) -> CorpusConfig:
    """One pass of the layout, one sample per batch."""
    return CorpusConfig(
        dataset_type=layout.dataset_type,
        shards=f"{root}/{layout.shards}",
        image_prefix=f"{root}/{layout.image_prefix}" if layout.image_prefix else None,
        batch_size=1,
        max_tokens=MAX_TOKENS[get_format(layout.dataset_type).kind],
        num_samples=len(layout.expected),
        workers=workers,
    )


def load(layout, root: str, tokenizer, image_processor, workers: int = 0):
    config = layout_config(layout, root, workers)
    loader = get_data(config, image_processor, tokenizer).dataloader
    return loader, list(loader)


def consumed_skips(layout, root: str, loader) -> dict:
    """The skips the stream must have counted: those of every part it started (counted with
    its first document) and of every record it consumed, in the seeded order of pass 0."""
    config, state = loader.dataset.config, loader.states[0]
    assert state["passes"] == 0
    total = Counter()
    for part_index, part in enumerate(pass_parts(config, 0, 0, 1)[: state["part"] + 1]):
        name = part.shard.removeprefix(root + "/")
        total.update(layout.shard_skips.get(name, {}))
        readable = list(open_shard(part.shard, SkipCounter()).indices)
        order = record_order(config.seed, 0, part, len(readable))
        taken = order if part_index < state["part"] else order[: state["record"]]
        for position in taken:
            total.update(layout.doc_skips.get(f"{name}#{readable[position]}", {}))
    return dict(total)


def pixels(data: bytes, image_processor) -> torch.Tensor:
    return image_processor(Image.open(io.BytesIO(data)).convert("RGB"))


def check(layout, root: str, loader, batches, tokenizer, image_processor) -> None:
    kind = get_format(layout.dataset_type).kind
    max_tokens = MAX_TOKENS[kind]
    seen = []
    for batch in batches:
        (key,) = batch["keys"]
        name = key.removeprefix(root + "/")
        seen.append(name)
        text, images = layout.expected[name]
        ids, mask = batch["input_ids"][0], batch["attention_mask"][0]
        length = int(mask.sum())
        expected = tokenizer(text, max_length=max_tokens, truncation=True)["input_ids"]
        assert ids[:length].tolist() == expected, name
        assert (ids[length:] == tokenizer.pad_token_id).all()
        slots = batch["images"][0, :, 0]
        assert len(slots) == (6 if kind == "interleaved" else 1)
        for slot, data in enumerate(images):
            assert torch.equal(slots[slot], pixels(data, image_processor)), f"{name} image {slot}"
        assert not slots[len(images) :].any()
    assert sorted(seen) == sorted(layout.expected)  # one pass: each usable record once
    assert loader.skip_counts() == consumed_skips(layout, root, loader)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reads_from_local_disk(name, published, tokenizer, image_processor):
    root, layouts = published
    loader, batches = load(layouts[name], str(root), tokenizer, image_processor)
    check(layouts[name], str(root), loader, batches, tokenizer, image_processor)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reads_from_ceph_rgw(name, published, tokenizer, image_processor, s3_bucket):
    root, layouts = published
    layout = layouts[name]
    remote = f"{s3_bucket}/published"
    folders = (layout.shards, *([layout.image_prefix] if layout.image_prefix else []))
    upload_dirs(root, remote, folders)
    _, local_batches = load(layout, str(root), tokenizer, image_processor)
    loader, batches = load(layout, remote, tokenizer, image_processor, workers=1)
    check(layout, remote, loader, batches, tokenizer, image_processor)
    assert same_stream(batches, remote, local_batches, str(root))


def test_omnicorpus_documents_follow_omnicorpuss_text_rule(published, tokenizer, image_processor):
    """Empty-string paragraphs add no space (OmniCorpus drops them before the join); MMC4's
    texts keep OpenFlamingo's rule (tested through the expectations of the other layouts)."""
    root, layouts = published
    _, batches = load(layouts["omnicorpus-jsonl"], str(root), tokenizer, image_processor)
    texts = {
        batch["keys"][0].rpartition("#")[2]: tokenizer.decode(
            batch["input_ids"][0, : int(batch["attention_mask"][0].sum())].tolist()
        )
        for batch in batches
    }
    assert texts["0"].startswith("present day.<image>\n When the city — 布拉格 — woke 🌃")
    assert "present day. <image>" not in texts["0"]


def test_img2dataset_sidecars_are_no_samples(published, tokenizer, image_processor):
    root, _ = published
    folder = build_sidecars_only(root)
    config = layout_config(
        SimpleNamespace(dataset_type="laion", shards=folder.name, image_prefix=None, expected=[1]),
        str(root),
    )
    with pytest.raises(ValueError) as error:
        get_data(config, image_processor, tokenizer)
    message = str(error.value)
    assert f"No shards found for '{folder}': it holds 1 .parquet, 1 _stats.json" in message
    assert "img2dataset's sidecar files" in message and "there are none here" in message
    sidecar = f"{root}/laion_i2d/00000.parquet"
    with pytest.raises(ValueError, match="is not a shard of dataset type laion, which reads .tar"):
        get_data(dataclasses.replace(config, shards=sidecar), image_processor, tokenizer)


def test_mmc4_converter_finds_the_image_folder_of_each_docs_shard(
    published, tokenizer, image_processor, tmp_path
):
    """scripts/convert_mmc4_to_wds.py on the same layout gives the same samples through
    `mmc4_wds` as the `.jsonl.zip` + image folders do through `mmc4`."""
    root, layouts = published
    layout = layouts["mmc4-folder-per-shard"]
    summary = convert_mmc4_to_wds(f"{root}/mmc4/docs", f"{root}/mmc4/images", str(tmp_path / "wds"))
    assert (summary["docs"], summary["skips"]) == (4, {"missing_image": 2})
    config = layout_config(layout, str(root))
    config = dataclasses.replace(config, dataset_type="mmc4_wds", shards=str(tmp_path / "wds"))
    loader = get_data(config, image_processor, tokenizer).dataloader

    def sample(ids, images) -> tuple:
        return tuple(ids), tuple(bytes(image.numpy().tobytes()) for image in images)

    got = sorted(
        sample(
            batch["input_ids"][0, : int(batch["attention_mask"][0].sum())].tolist(),
            [s for s in batch["images"][0, :, 0] if s.any()],
        )
        for batch in loader
    )
    expected = sorted(
        sample(tokenizer(text)["input_ids"], [pixels(data, image_processor) for data in images])
        for text, images in layout.expected.values()
    )
    assert got == expected

"""open_flamingo.data.synthetic and scripts/make_synthetic_corpus.py: a seeded shapes corpus whose
captions say what is drawn, readable by the loader's own functions."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import open_clip
import pytest

import open_flamingo.src.factory  # noqa: F401  (registers the ViT-Tiny-16 config)
from open_flamingo.data.documents import parse_laion_wds, parse_omnicorpus
from open_flamingo.data.samples import build_interleaved_sample, build_pair_sample, decode_image
from open_flamingo.data.shards import iter_records
from open_flamingo.data.skips import SkipCounter
from open_flamingo.data.synthetic import (
    COLORS,
    POSITIONS,
    SIZES,
    ShapeSpec,
    draw_shape,
    write_synthetic_corpus,
)
from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.tools import make_synthetic_corpus

SMALL = dict(num_docs=30, num_pairs=40, num_eval=20, docs_per_shard=8, pairs_per_shard=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return write_synthetic_corpus(str(tmp_path_factory.mktemp("shapes")), seed=7, **SMALL)


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def read_docs(corpus: dict) -> list:
    skips = SkipCounter()
    docs = []
    for shard in corpus["interleaved_shards"]:
        for index, record in iter_records(shard, Path(shard).read_bytes(), skips):
            docs.append(
                (record, parse_omnicorpus(record, f"{shard}#{index}", corpus["image_prefix"]))
            )
    assert skips.as_dict() == {}
    return docs


def read_pairs(corpus: dict) -> list:
    skips = SkipCounter()
    pairs = []
    for shard in corpus["pair_shards"]:
        for _, sample in iter_records(shard, Path(shard).read_bytes(), skips):
            pairs.append((json.loads(sample["json"]), parse_laion_wds(sample, sample["__key__"])))
    assert skips.as_dict() == {}
    return pairs


def spec_of(info: dict) -> ShapeSpec:
    fields = ("shape", "color", "position", "size", "background", "jitter", "texture_seed")
    return ShapeSpec(**{f: tuple(info[f]) if f == "jitter" else info[f] for f in fields})


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    tiny = dict(num_docs=5, num_pairs=5, num_eval=3, docs_per_shard=2, pairs_per_shard=2)
    first = write_synthetic_corpus(str(tmp_path / "a"), seed=3, **tiny)
    write_synthetic_corpus(str(tmp_path / "b"), seed=3, **tiny)
    write_synthetic_corpus(str(tmp_path / "c"), seed=4, **tiny)
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    summaries = a.pop("corpus.json"), b.pop("corpus.json"), c.pop("corpus.json")
    assert a == b
    assert json.loads(summaries[0])["num_doc_images"] == first["num_doc_images"]
    shared = set(a.values()) & set(c.values())
    assert not any(name.startswith("images") for name, data in c.items() if data in shared)


def test_layout_and_counts(corpus):
    assert len(corpus["interleaved_shards"]) == 4  # 30 docs, 8 per shard
    assert len(corpus["pair_shards"]) == 3  # 40 pairs, 16 per shard
    docs = read_docs(corpus)
    assert len(docs) == 30
    assert sum(doc.num_images for _, doc in docs) == corpus["num_doc_images"]
    assert len(read_pairs(corpus)) == 40


def test_docs_follow_each_image_with_a_text_about_it(corpus):
    for record, doc in read_docs(corpus):
        assert 2 <= doc.num_images <= 5
        assert record["general_metadata"]["source"] == "synthetic-shapes"
        for position, ref in enumerate(doc.images):
            if ref is None:
                continue
            url, info = record["images"][position], record["metadata"][position]
            assert url.startswith("https://synthetic.invalid/shapes/") and url.endswith(".jpg")
            assert Path(ref.uri).name == hashlib.sha256(url.encode()).hexdigest()
            following = doc.texts[position + 1]
            assert spec_of(info).caption in following
            image = decode_image(Path(ref.uri).read_bytes())
            assert image.size == (info["width"], info["height"]) == (64, 64)


def nearest_color(pixel) -> str:
    names = list(COLORS)
    distances = [np.abs(np.array(COLORS[name]) - pixel).sum() for name in names]
    return names[int(np.argmin(distances))]


def colored_mask(pixels: np.ndarray, color: str) -> np.ndarray:
    """(H, W) bool: pixels within a JPEG's error of `color`."""
    return np.abs(pixels.astype(int) - np.array(COLORS[color])).sum(-1) < 90


def classify_shape(mask: np.ndarray, cx: float, cy: float, half: float) -> str:
    """The shape whose (2 * half)-sided box is centred at (cx, cy) in `mask`, by geometry: a square
    fills its box, a triangle (point up) is bottom-heavy, a star fills under half, a circle covers
    its box's diagonals at 0.6 of the half-side, a cross its arms but not those diagonals."""

    def inside(fx: float, fy: float) -> bool:
        return bool(mask[round(cy + fy * half), round(cx + fx * half)])

    fill = mask.sum() / (2 * half) ** 2
    rows = mask.nonzero()[0]
    diagonals = [inside(sx * 0.6, sy * 0.6) for sx in (-1, 1) for sy in (-1, 1)]
    arms = [inside(0, 0.8), inside(0, -0.8), inside(0.8, 0), inside(-0.8, 0)]
    if fill > 0.95:
        return "square"
    if (rows > cy).sum() > 1.5 * (rows < cy).sum():
        return "triangle"
    if fill < 0.5:
        return "star"
    if all(diagonals):
        return "circle"
    if all(arms) and not any(diagonals):
        return "cross"
    return "unknown"


def test_captions_match_what_is_drawn(corpus):
    """Colour at the captioned place, grey background far from it, shape and size by geometry."""
    areas: dict[tuple[str, str], list[int]] = {}
    pairs = read_pairs(corpus)
    for info, pair in pairs:
        spec = spec_of(info)
        assert pair.caption == info["caption"] == spec.caption
        pixels = np.asarray(decode_image(pair.image.data)).astype(int)
        cx, cy = spec.center(64)
        patch = pixels[round(cy) - 1 : round(cy) + 2, round(cx) - 1 : round(cx) + 2]
        assert nearest_color(patch.reshape(-1, 3).mean(0)) == spec.color, spec
        x, y = POSITIONS[spec.position]
        corner = pixels[-6:-2, -6:-2] if (x, y) <= (0.5, 0.5) else pixels[2:6, 2:6]
        assert np.ptp(corner, axis=-1).max() < 30, spec  # grey: R = G = B up to JPEG noise
        mask = colored_mask(pixels, spec.color)
        assert classify_shape(mask, cx, cy, SIZES[spec.size] * 32) == spec.shape, spec
        areas.setdefault((spec.shape, spec.size), []).append(int(mask.sum()))
    assert len(pairs) == 40 and len(areas) > 5
    for (shape, size), values in areas.items():
        if size == "large" and (shape, "small") in areas:
            assert min(values) > 2.5 * max(areas[(shape, "small")])


def test_every_attribute_value_can_be_drawn():
    rng = random.Random(0)
    for shape in ("circle", "square", "triangle", "cross", "star"):
        for color in COLORS:
            spec = ShapeSpec(
                shape, color, "center", "large", "textured", (0.0, 0.0), rng.getrandbits(32)
            )
            pixels = np.asarray(draw_shape(spec, 48))
            assert pixels.shape == (48, 48, 3)
            assert nearest_color(pixels[24, 24]) == color


def test_eval_split_is_held_out(corpus):
    items = json.loads(Path(corpus["eval_json"]).read_text())
    assert len(items) == 20
    eval_root = Path(corpus["eval_json"]).parent
    train_hashes = {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(corpus["image_prefix"]).iterdir()
    }
    train_hashes |= {hashlib.sha256(pair.image.data).hexdigest() for _, pair in read_pairs(corpus)}
    train_urls = {url for record, _ in read_docs(corpus) for url in record["images"] if url}
    train_urls |= {info["url"] for info, _ in read_pairs(corpus)}
    assert len(train_urls) == corpus["num_doc_images"] + corpus["num_pairs"]
    for item in items:
        data = (eval_root / item["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() not in train_hashes
        assert not any(item["id"] in url for url in train_urls)
        assert item["caption"] == spec_of(item).caption
        pixels = np.asarray(decode_image(data)).astype(int)
        cx, cy = (round(v) for v in spec_of(item).center(64))
        assert (
            nearest_color(pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0))
            == item["color"]
        )


def test_corpus_builds_training_samples_without_skips(corpus, byte_tokenizer_dir):
    tokenizer = load_flamingo_tokenizer(str(byte_tokenizer_dir))
    image_processor = open_clip.create_model_and_transforms("ViT-Tiny-16", pretrained=None)[2]
    skips = SkipCounter()
    for record, doc in read_docs(corpus)[:10]:
        images = [decode_image(Path(r.uri).read_bytes()) if r else None for r in doc.images]
        sample = build_interleaved_sample(
            doc,
            images,
            tokenizer,
            image_processor,
            max_tokens=512,
            max_num_images=5,
            single_image_drop_prob=0.5,
            rng=random.Random(0),
            skips=skips,
        )
        text = tokenizer.decode(sample.input_ids[sample.attention_mask.bool()])
        assert text.count("<image>") == doc.num_images
        captions = [spec_of(info).caption for info in record["metadata"] if info]
        for chunk, caption in zip(text.split("<image>")[1:], captions, strict=True):
            assert caption in chunk.split("<|endofchunk|>")[0]
    for _, pair in read_pairs(corpus)[:10]:
        sample = build_pair_sample(
            pair.caption,
            decode_image(pair.image.data),
            tokenizer,
            image_processor,
            max_tokens=64,
            skips=skips,
        )
        assert tokenizer.decode(sample.input_ids[sample.attention_mask.bool()]) == (
            f"<image>{pair.caption}<|endofchunk|><|endoftext|>"
        )
    assert skips.as_dict() == {}


def test_cli_writes_gzip_shards_and_rejects_bad_sizes(tmp_path, capsys):
    args = ["--num-docs", "3", "--num-pairs", "2", "--num-eval", "1", "--docs-per-shard", "2"]
    make_synthetic_corpus.main(["--out", str(tmp_path / "out"), "--gzip", "--seed", "5", *args])
    summary = json.loads(capsys.readouterr().out)
    assert [Path(s).name for s in summary["interleaved_shards"]] == [
        "shard-00000.jsonl.gz",
        "shard-00001.jsonl.gz",
    ]
    gz_records = [
        record
        for shard in summary["interleaved_shards"]
        for _, record in iter_records(shard, Path(shard).read_bytes(), SkipCounter())
    ]
    plain = write_synthetic_corpus(
        str(tmp_path / "plain"), num_docs=3, num_pairs=2, num_eval=1, docs_per_shard=2, seed=5
    )
    assert gz_records == [record for record, _ in read_docs(plain)]
    with pytest.raises(SystemExit) as exited:
        make_synthetic_corpus.main(["--out", str(tmp_path / "x"), "--image-size", "0"])
    assert exited.value.code == 2
    assert "--image-size must be at least 1" in capsys.readouterr().err


def test_eval_split_in_the_flickr30k_layout_reads_back(corpus):
    from open_flamingo.eval.eval_datasets import CaptionDataset

    eval_root = Path(corpus["eval_json"]).parent
    items = json.loads(Path(corpus["eval_json"]).read_text())
    annotations = json.loads((eval_root / "annotations.json").read_text())
    splits = {
        is_train: CaptionDataset(
            eval_root / "images", eval_root / "karpathy.json", is_train, "flickr"
        )
        for is_train in (True, False)
    }
    assert len(splits[True]) == len(splits[False]) == len(items) // 2
    read = [splits[True][i] for i in range(10)] + [splits[False][i] for i in range(10)]
    for item, example in zip(items, read, strict=True):
        assert example["image_id"] == item["id"]
        assert example["caption"] == item["caption"]
        assert np.array_equal(
            np.asarray(example["image"]),
            np.asarray(decode_image((eval_root / item["file_name"]).read_bytes())),
        )
    captions = {a["image_id"]: a["caption"] for a in annotations["annotations"]}
    assert captions == {item["id"]: item["caption"] for item in items}
    assert [image["id"] for image in annotations["images"]] == [item["id"] for item in items]

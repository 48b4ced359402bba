"""A small, seeded corpus of drawn shapes, in the formats the loader reads.

Every image shows one shape (circle, square, triangle, cross, star) in one of six clearly distinct
colours, at one of five positions, small or large, on a plain or textured grey background. Its
caption says exactly that ("a large red circle in the top left"), so the text that follows an
image is predictable from the image: a real signal that a tiny Flamingo can learn.

`write_synthetic_corpus` writes, under a local directory or any storage URI:
- `interleaved/shard-NNNNN.jsonl[.gz]`: OmniCorpus-schema documents with 2-5 images, each image
  followed by a text about it; image objects under `images/<sha256(url)>`;
- `pairs/shard-NNNNN.tar`: img2dataset-style webdataset pairs (`.jpg`, `.txt`, `.json`);
- `eval/captions.json` + `eval/images/<id>.jpg`: a held-out split whose images differ from every
  training image. The same split is also written in the Flickr30k layout that the evaluation
  reads (`python -m open_flamingo.eval.evaluate --eval_flickr30`): `eval/karpathy.json`, whose
  first half is the "train" split (the demonstrations) and second half the "test" split (the
  queries), and `eval/annotations.json`, the COCO-style captions that CIDEr compares against;
- `corpus.json`: what was written (also returned). It is not a shard manifest: give the loader
  the `interleaved/` and `pairs/` folders and the `images/` prefix.
"""

import gzip
import hashlib
import io
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from .doc_types import image_object_name
from .shards import tar_bytes
from .storage import Location, parse_location, write_bytes

SHAPES = ("circle", "square", "triangle", "cross", "star")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 215, 20),
    "purple": (140, 40, 190),
    "orange": (250, 135, 10),
}
# Centre of each position, as fractions of the image side (x, y).
POSITIONS = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
# Side of the shape's bounding box, as a fraction of the image side.
SIZES = {"small": 0.2, "large": 0.4}
BACKGROUNDS = ("plain", "textured")
MAX_JITTER = 0.04  # the shape centre moves by up to this fraction of the image side
URL_PREFIX = "https://synthetic.invalid/shapes/"
MAX_EVAL_REDRAWS = 1000
DOC_INTROS = ("A page about shapes.", "Some drawings of shapes.", "My shape collection.")
IMAGE_TEXT_TEMPLATES = ("This is {}.", "Here we see {}.", "The picture shows {}.", "It is {}.")


@dataclass(frozen=True)
class ShapeSpec:
    """What one synthetic image shows, and the small random details of how it is drawn."""

    shape: str
    color: str
    position: str
    size: str
    background: str
    jitter: tuple[float, float]
    texture_seed: int

    @property
    def caption(self) -> str:
        place = "in the center" if self.position == "center" else f"in the {self.position}"
        return f"a {self.size} {self.color} {self.shape} {place}"

    def center(self, image_size: int) -> tuple[float, float]:
        """The shape's centre in pixels (x, y)."""
        x, y = POSITIONS[self.position]
        return (x + self.jitter[0]) * image_size, (y + self.jitter[1]) * image_size


def random_spec(rng: random.Random) -> ShapeSpec:
    return ShapeSpec(
        shape=rng.choice(SHAPES),
        color=rng.choice(sorted(COLORS)),
        position=rng.choice(list(POSITIONS)),
        size=rng.choice(list(SIZES)),
        background=rng.choice(BACKGROUNDS),
        jitter=(rng.uniform(-MAX_JITTER, MAX_JITTER), rng.uniform(-MAX_JITTER, MAX_JITTER)),
        texture_seed=rng.getrandbits(32),
    )


def draw_shape(spec: ShapeSpec, image_size: int = 64) -> Image.Image:
    """The RGB image (image_size x image_size) that `spec` describes."""
    texture = np.random.default_rng(spec.texture_seed)
    if spec.background == "plain":
        grey = int(texture.integers(195, 246))
        image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    else:  # blocks of about 4x4 pixels in random greys
        blocks = texture.integers(150, 236, size=(-(-image_size // 4),) * 2, dtype=np.uint8)
        image = Image.fromarray(blocks).resize((image_size, image_size), Image.Resampling.NEAREST)
        image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    cx, cy = spec.center(image_size)
    half = SIZES[spec.size] * image_size / 2
    fill = COLORS[spec.color]
    box = (cx - half, cy - half, cx + half, cy + half)
    if spec.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif spec.shape == "square":
        draw.rectangle(box, fill=fill)
    elif spec.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif spec.shape == "cross":
        arm = half / 3
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
    else:  # star: five points, inner radius 0.45 of the outer one
        points = []
        for corner in range(10):
            radius = half if corner % 2 == 0 else 0.45 * half
            angle = np.pi * (corner / 5 - 0.5)
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        draw.polygon(points, fill=fill)
    return image


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # 4:4:4 chroma keeps small shapes' colours true.
    image.save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def _image_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"synthetic-shapes/{seed}/{split}/{index}")


def _chunks(items: range, size: int) -> Iterator[range]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def _doc_record(
    seed: int, doc_index: int, image_size: int
) -> tuple[dict, list[tuple[str, ShapeSpec]]]:
    """One OmniCorpus-schema document, and its images as (url, what to draw)."""
    rng = _image_rng(seed, "doc", doc_index)
    images, texts, metadata, specs = [], [], [], []
    if rng.random() < 0.5:
        images.append(None)
        texts.append(rng.choice(DOC_INTROS))
        metadata.append(None)
    for image_index in range(rng.randint(2, 5)):
        spec = random_spec(rng)
        url = f"{URL_PREFIX}s{seed}-d{doc_index:06d}-{image_index}.jpg"
        specs.append((url, spec))
        images += [url, None]
        texts += [None, rng.choice(IMAGE_TEXT_TEMPLATES).format(spec.caption)]
        metadata += [{"width": image_size, "height": image_size, **asdict(spec)}, None]
    record = {
        "general_metadata": {
            "url": f"https://synthetic.invalid/docs/s{seed}-d{doc_index:06d}.html",
            "source": "synthetic-shapes",
        },
        "images": images,
        "texts": texts,
        "metadata": metadata,
    }
    return record, specs


class _CorpusWriter:
    """Writes files through a thread pool and remembers the hashes of all training images."""

    def __init__(self, out_uri: str, seed: int, image_size: int, pool: ThreadPoolExecutor):
        self.root = parse_location(out_uri)
        self.image_prefix = self.root.join("images")
        self.seed, self.image_size = seed, image_size
        self.train_hashes: set[str] = set()
        self._pool, self._pending = pool, []

    def write(self, location: Location, data: bytes) -> str:
        self._pending.append(self._pool.submit(write_bytes, str(location), data))
        return str(location)

    def wait(self) -> None:
        for future in self._pending:
            future.result()  # re-raises a failed write

    def training_image(self, spec: ShapeSpec) -> bytes:
        jpeg = encode_jpeg(draw_shape(spec, self.image_size))
        self.train_hashes.add(hashlib.sha256(jpeg).hexdigest())
        return jpeg

    def docs(self, num_docs: int, docs_per_shard: int, gzip_docs: bool) -> tuple[list[str], int]:
        shards, num_images = [], 0
        for shard_index, doc_indices in enumerate(_chunks(range(num_docs), docs_per_shard)):
            lines = []
            for doc_index in doc_indices:
                record, specs = _doc_record(self.seed, doc_index, self.image_size)
                lines.append(json.dumps(record) + "\n")
                for url, spec in specs:
                    jpeg = self.training_image(spec)
                    self.write(self.image_prefix.join(image_object_name(url)), jpeg)
                num_images += len(specs)
            text = "".join(lines).encode("utf-8")
            name = f"shard-{shard_index:05d}.jsonl"
            if gzip_docs:
                text, name = gzip.compress(text, mtime=0), name + ".gz"
            shards.append(self.write(self.root.join("interleaved", name), text))
        return shards, num_images

    def pairs(self, num_pairs: int, pairs_per_shard: int) -> list[str]:
        shards = []
        for shard_index, pair_indices in enumerate(_chunks(range(num_pairs), pairs_per_shard)):
            members = []
            for offset, pair_index in enumerate(pair_indices):
                spec = random_spec(_image_rng(self.seed, "pair", pair_index))
                key = f"{shard_index:05d}{offset:04d}"  # img2dataset: shard, then index
                info = {
                    "key": key,
                    "url": f"{URL_PREFIX}s{self.seed}-p{pair_index:06d}.jpg",
                    "caption": spec.caption,
                    "width": self.image_size,
                    "height": self.image_size,
                    "status": "success",
                    **asdict(spec),
                }
                members += [
                    (f"{key}.jpg", self.training_image(spec)),
                    (f"{key}.txt", spec.caption.encode("utf-8")),
                    (f"{key}.json", json.dumps(info).encode("utf-8")),
                ]
            name = f"shard-{shard_index:05d}.tar"
            shards.append(self.write(self.root.join("pairs", name), tar_bytes(members)))
        return shards

    def texts(self, num_texts: int, texts_per_shard: int) -> list[str]:
        """Text-only documents (`{"text": ...}` JSON lines) describing shapes in words: a
        mixture's text source."""
        shards = []
        for shard_index, text_indices in enumerate(_chunks(range(num_texts), texts_per_shard)):
            lines = []
            for text_index in text_indices:
                rng = random.Random(f"{self.seed}/text/{text_index}")
                sentences = [
                    f"Picture {random_spec(rng).caption}." for _ in range(rng.randint(2, 4))
                ]
                record = {"id": f"s{self.seed}-t{text_index:06d}", "text": " ".join(sentences)}
                lines.append(json.dumps(record) + "\n")
            name = f"shard-{shard_index:05d}.jsonl"
            data = "".join(lines).encode("utf-8")
            shards.append(self.write(self.root.join("text", name), data))
        return shards

    def eval_split(self, num_eval: int) -> str:
        """Call after the training splits: each image is redrawn until it is new."""
        items = []
        for eval_index in range(num_eval):
            rng = _image_rng(self.seed, "eval", eval_index)
            for _ in range(MAX_EVAL_REDRAWS):
                spec = random_spec(rng)
                jpeg = encode_jpeg(draw_shape(spec, self.image_size))
                if hashlib.sha256(jpeg).hexdigest() not in self.train_hashes:
                    break
            else:
                raise RuntimeError(f"eval image {eval_index}: every draw repeats a training image")
            item_id = f"s{self.seed}-e{eval_index:06d}"
            file_name = f"images/{item_id}.jpg"
            self.write(self.root.join("eval", file_name), jpeg)
            items.append({"id": item_id, "file_name": file_name, "caption": spec.caption})
            items[-1].update(asdict(spec))
        for name, content in caption_eval_layout(items).items():
            self.write(self.root.join("eval", name), json.dumps(content).encode())
        return self.write(self.root.join("eval", "captions.json"), json.dumps(items).encode())


def caption_eval_layout(items: list[dict]) -> dict[str, dict]:
    """The eval split as Flickr30k files: {"karpathy.json": Karpathy split, "annotations.json":
    COCO-style captions}. Image ids are the file names without extension, as the Flickr30k
    reader derives them; the first half of the items is "train", the rest "test"."""
    num_train = len(items) // 2
    images, annotations = [], []
    for index, item in enumerate(items):
        file_name = item["file_name"].rsplit("/", 1)[-1]
        images.append(
            {
                "filename": file_name,
                "filepath": "images",
                "split": "train" if index < num_train else "test",
                "sentences": [{"raw": item["caption"]}],
            }
        )
        annotations.append({"image_id": item["id"], "id": index, "caption": item["caption"]})
    return {
        "karpathy.json": {"images": images, "dataset": "flickr30k"},
        "annotations.json": {
            "images": [{"id": item["id"]} for item in items],
            "annotations": annotations,
        },
    }


def write_synthetic_corpus(
    out_uri: str,
    *,
    num_docs: int = 1000,
    num_pairs: int = 1000,
    num_eval: int = 200,
    docs_per_shard: int = 100,
    pairs_per_shard: int = 250,
    image_size: int = 64,
    seed: int = 0,
    gzip_docs: bool = False,
    write_threads: int = 8,
    num_texts: int = 0,
    texts_per_shard: int = 100,
) -> dict:
    """Write the corpus under `out_uri` (local directory or storage URI); the same arguments give
    byte-identical files. Returns a summary: paths (as URIs) and counts. `num_texts` > 0 also
    writes text-only documents under `text/` (listed as `text_shards`)."""
    with ThreadPoolExecutor(write_threads) as pool:
        writer = _CorpusWriter(out_uri, seed, image_size, pool)
        doc_shards, num_doc_images = writer.docs(num_docs, docs_per_shard, gzip_docs)
        pair_shards = writer.pairs(num_pairs, pairs_per_shard)
        eval_json = writer.eval_split(num_eval)
        text_shards = writer.texts(num_texts, texts_per_shard)
        writer.wait()
    summary = {
        "seed": seed,
        "image_size": image_size,
        "image_prefix": str(writer.image_prefix),
        "interleaved_shards": doc_shards,
        "pair_shards": pair_shards,
        "eval_json": eval_json,
        "num_docs": num_docs,
        "num_doc_images": num_doc_images,
        "num_pairs": num_pairs,
        "num_eval": num_eval,
    }
    if num_texts:
        summary.update(text_shards=text_shards, num_texts=num_texts)
    write_bytes(str(writer.root.join("corpus.json")), json.dumps(summary, indent=2).encode())
    return summary

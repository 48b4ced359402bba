"""Every corpus format through `get_data`, from local disk and from a real Ceph RGW.

One tiny instance of each dataset type is built here from the synthetic shapes corpus, whose
captions say what each image shows: OmniCorpus as `.jsonl` / `.jsonl.gz` / `.jsonl.zip`, OBELICS as
parquet, MMC4 as `.jsonl.zip` + image files, MMC4 as OpenFlamingo's webdataset (through
scripts/convert_mmc4_to_wds.py), LAION as img2dataset tars and as url + caption tables (JSONL and
parquet). For each, the batches must hold exactly the expected texts (the caption of each image
right after its `<image>`), the pixels of exactly those images, and labels masked by the rules;
the same files in an S3 bucket must give identical batches.
"""

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_data_loader import fingerprint

from open_flamingo.data import storage
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.doc_types import image_object_name
from open_flamingo.data.loader import get_data
from open_flamingo.data.mmc4 import MMC4_MIN_IMAGE_BYTES
from open_flamingo.data.synthetic import ShapeSpec, write_synthetic_corpus
from open_flamingo.tools.convert_mmc4_to_wds import convert_mmc4_to_wds

NUM_DOCS, DOCS_PER_SHARD = 8, 4
NUM_PAIRS, PAIRS_PER_SHARD = 8, 4
BATCH_SIZE = 4
MAX_TOKENS_INTERLEAVED = 384  # longer than every doc here: nothing is truncated
MAX_TOKENS_PAIRS = 64
IMAGE, EOC = "<image>", "<|endofchunk|>"
SPEC_FIELDS = [f.name for f in fields(ShapeSpec)]


@dataclass(frozen=True)
class Expected:
    """What one sample must be: its full text (before padding), the encoded images whose pixels
    fill its image slots in order, and the caption of each of those images."""

    text: str
    images: tuple[bytes, ...]
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    dataset_type: str
    shards: str  # relative to the root
    image_prefix: str | None  # relative to the root
    upload: tuple[str, ...]  # the folders (relative to the root) that the case reads
    expected: dict  # key relative to the root ("/dir/shard#index") -> Expected
    skips: dict  # skip counts after one pass


# ---------------------------------------------------------------- building the datasets


def spec_caption(metadata: dict) -> str:
    """The caption of a synthetic image, from the spec stored in its metadata entry."""
    values = {name: metadata[name] for name in SPEC_FIELDS}
    values["jitter"] = tuple(values["jitter"])
    return ShapeSpec(**values).caption


def read_jsonl(path: Path) -> list[dict]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode().splitlines()]


def interleaved_expected(record: dict, image_bytes: dict, eos: str, dropped=()) -> Expected:
    """A doc as training text, built from the spec's rules: the texts before the first kept
    image, then for each kept image `<image>` + the texts up to the next kept image, joined by
    `<|endofchunk|>`; `<|endofchunk|>{eos}` at the end. `image_bytes`: position -> bytes."""
    groups, kept, captions = [[]], [], []
    for position, text in enumerate(record["texts"]):
        if text is not None:
            groups[-1].append(text)
        elif position not in dropped:
            groups.append([])
            kept.append(image_bytes[position])
            captions.append(spec_caption(record["metadata"][position]))
    body = EOC.join(IMAGE + " ".join(group) for group in groups[1:])
    return Expected(" ".join(groups[0]) + body + EOC + eos, tuple(kept), tuple(captions))


def omnicorpus_images(record: dict, image_dir: Path) -> dict[int, bytes]:
    return {
        position: (image_dir / hashlib.sha256(url.encode()).hexdigest()).read_bytes()
        for position, url in enumerate(record["images"])
        if url is not None
    }


def with_comment(jpeg: bytes, size: int) -> bytes:
    """`jpeg` with a COM segment of `size` bytes right after SOI: valid, same pixels."""
    assert jpeg[:2] == b"\xff\xd8" and size <= 65533
    return jpeg[:2] + b"\xff\xfe" + (size + 2).to_bytes(2, "big") + b"x" * size + jpeg[2:]


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def write_parquet(path: Path, rows: list[dict], row_group_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def mmc4_record(record: dict, doc_index: int) -> tuple[dict, list[str]]:
    """The MMC4 form of a synthetic doc, and the image file names. Each image's similarity is
    highest (0.6-0.9) on the sentence that follows it, 0.3 (above the threshold, a decoy for a
    matching that is not one-to-one) on the sentence after that, and 0.05 elsewhere."""
    sentence_of = {}
    for position, text in enumerate(record["texts"]):
        if text is not None:
            sentence_of[position] = len(sentence_of)
    sentences = [text for text in record["texts"] if text is not None]
    infos, rows, names = [], [], []
    for position, url in enumerate(record["images"]):
        if url is None:
            continue
        own = sentence_of[position + 1]
        row = [0.05] * len(sentences)
        row[own] = 0.9 - 0.1 * (len(infos) % 4)
        if own + 1 < len(sentences):
            row[own + 1] = 0.3
        name = f"{doc_index:03d}-{len(infos)}-{image_object_name(url)[:12]}.jpg"
        infos.append(
            {"image_name": name, "raw_url": url, "matched_text_index": own, "matched_sim": row[own]}
        )
        rows.append(row)
        names.append(name)
    doc = {
        "url": record["general_metadata"]["url"],
        "text_list": sentences,
        "image_info": infos,
        "similarity_matrix": rows,
    }
    return doc, names


@pytest.fixture(scope="module")
def formats(tmp_path_factory, tokenizer) -> tuple[Path, dict[str, Case]]:
    """All datasets under one root, and a Case for each dataset type / container."""
    root = tmp_path_factory.mktemp("formats")
    eos = tokenizer.eos_token
    common = dict(num_docs=NUM_DOCS, docs_per_shard=DOCS_PER_SHARD, num_eval=0, seed=0)
    write_synthetic_corpus(
        str(root / "shapes"), num_pairs=NUM_PAIRS, pairs_per_shard=PAIRS_PER_SHARD, **common
    )
    write_synthetic_corpus(str(root / "shapes_gz"), num_pairs=0, gzip_docs=True, **common)
    images = root / "shapes" / "images"
    cases: dict[str, Case] = {}

    # OmniCorpus: the synthetic .jsonl and .jsonl.gz shards as written.
    docs: list[dict] = []  # in doc order
    for variant, suffix in (("shapes", ".jsonl"), ("shapes_gz", ".jsonl.gz")):
        expected = {}
        shards = sorted((root / variant / "interleaved").iterdir())
        assert [p.name for p in shards] == [f"shard-0000{i}{suffix}" for i in range(2)]
        for shard in shards:
            for index, record in enumerate(read_jsonl(shard)):
                if variant == "shapes":
                    docs.append(record)
                image_bytes = omnicorpus_images(record, root / variant / "images")
                key = f"/{variant}/interleaved/{shard.name}#{index}"
                expected[key] = interleaved_expected(record, image_bytes, eos)
        cases[f"omnicorpus-{suffix[1:]}"] = Case(
            "omnicorpus",
            f"{variant}/interleaved",
            f"{variant}/images",
            (f"{variant}/interleaved", f"{variant}/images"),
            expected,
            {},
        )
    assert len(docs) == NUM_DOCS
    doc_expected = [interleaved_expected(r, omnicorpus_images(r, images), eos) for r in docs]
    # The docs are the known synthetic ones: each image's text is about that image.
    for expected in doc_expected:
        assert 2 <= len(expected.images) <= 5 and len(expected.captions) == len(expected.images)
        for caption, piece in zip(expected.captions, expected.text.split(IMAGE)[1:], strict=True):
            assert caption in piece.split(EOC)[0]
    assert max(len(tokenizer(e.text)["input_ids"]) for e in doc_expected) < MAX_TOKENS_INTERLEAVED

    # OmniCorpus .jsonl.zip: both synthetic shards as two members of one zip (indices continue).
    members = {
        f"part-{i}.jsonl": (root / "shapes" / "interleaved" / f"shard-0000{i}.jsonl").read_bytes()
        for i in range(2)
    }
    (root / "omnicorpus_zip").mkdir()
    (root / "omnicorpus_zip" / "docs.jsonl.zip").write_bytes(zip_bytes(members))
    cases["omnicorpus-jsonl.zip"] = Case(
        "omnicorpus",
        "omnicorpus_zip",
        "shapes/images",
        ("omnicorpus_zip", "shapes/images"),
        {f"/omnicorpus_zip/docs.jsonl.zip#{i}": e for i, e in enumerate(doc_expected)},
        {},
    )

    # OBELICS parquet: metadata and general_metadata as JSON strings; 3 row groups.
    rows = [
        {
            "images": record["images"],
            "texts": record["texts"],
            "metadata": json.dumps(record["metadata"]),
            "general_metadata": json.dumps(record["general_metadata"]),
        }
        for record in docs
    ]
    write_parquet(root / "obelics" / "obelics-00000.parquet", rows, row_group_size=3)
    assert pq.ParquetFile(root / "obelics" / "obelics-00000.parquet").num_row_groups == 3
    cases["obelics-parquet"] = Case(
        "obelics",
        "obelics",
        "shapes/images",
        ("obelics", "shapes/images"),
        {f"/obelics/obelics-00000.parquet#{i}": e for i, e in enumerate(doc_expected)},
        {},
    )

    # MMC4 .jsonl.zip + image files. Stored images carry a JPEG comment that lifts them over
    # MMC4's 10 KB rule, except one image of the first doc with 3+ images: it is skipped.
    small_doc = next(i for i, e in enumerate(doc_expected) if len(e.images) >= 3)
    small_position = [p for p, url in enumerate(docs[small_doc]["images"]) if url][1]
    mmc4_images = root / "mmc4" / "images"
    mmc4_images.mkdir(parents=True)
    mmc4_docs, mmc4_expected = [], []
    for doc_index, record in enumerate(docs):
        doc, names = mmc4_record(record, doc_index)
        mmc4_docs.append(doc)
        originals = omnicorpus_images(record, images)
        for name, position in zip(names, sorted(originals), strict=True):
            original = originals[position]
            if (doc_index, position) == (small_doc, small_position):
                assert len(original) // 1000 <= 10  # "10 KB or less"
                stored = original
            else:
                stored = with_comment(original, 12_000)
                assert len(stored) > 11_000 and len(stored) // 1000 > 10
                assert pixels(stored) == pixels(original)  # still the same, valid image
            (mmc4_images / name).write_bytes(stored)
        dropped = {small_position} if doc_index == small_doc else set()
        mmc4_expected.append(interleaved_expected(record, originals, eos, dropped))
    assert MMC4_MIN_IMAGE_BYTES == 11_000
    for shard_index in range(2):
        lines = mmc4_docs[shard_index * DOCS_PER_SHARD : (shard_index + 1) * DOCS_PER_SHARD]
        name = f"docs_shard_{shard_index}_v2.jsonl"
        data = "".join(json.dumps(doc) + "\n" for doc in lines).encode()
        (root / "mmc4" / "docs").mkdir(exist_ok=True)
        (root / "mmc4" / "docs" / f"{name}.zip").write_bytes(zip_bytes({name: data}))
    cases["mmc4-jsonl.zip"] = Case(
        "mmc4",
        "mmc4/docs",
        "mmc4/images",
        ("mmc4",),
        {
            f"/mmc4/docs/docs_shard_{i // DOCS_PER_SHARD}_v2.jsonl.zip#{i % DOCS_PER_SHARD}": e
            for i, e in enumerate(mmc4_expected)
        },
        {"small_image": 1},
    )

    # MMC4 webdataset, written by the converter script; docs found again by their URL.
    summary = convert_mmc4_to_wds(
        str(root / "mmc4" / "docs"),
        str(mmc4_images),
        str(root / "mmc4_wds"),
        docs_per_shard=DOCS_PER_SHARD,
        read_threads=4,
    )
    assert (summary["docs"], len(summary["shards"]), summary["skips"]) == (NUM_DOCS, 2, {})
    by_url = {doc["url"]: e for doc, e in zip(mmc4_docs, mmc4_expected, strict=True)}
    wds_expected = {}
    for shard in sorted((root / "mmc4_wds").iterdir()):
        with tarfile.open(shard) as archive:
            for index, member in enumerate(archive.getmembers()):
                doc = json.loads(archive.extractfile(member).read())
                wds_expected[f"/mmc4_wds/{shard.name}#{index}"] = by_url[doc["url"]]
    assert len(wds_expected) == NUM_DOCS
    cases["mmc4_wds-tar"] = Case(
        "mmc4_wds", "mmc4_wds", None, ("mmc4_wds",), wds_expected, {"small_image": 1}
    )

    # LAION: the synthetic img2dataset tars, read here with tarfile.
    pairs, laion_expected = [], {}
    for shard in sorted((root / "shapes" / "pairs").iterdir()):
        with tarfile.open(shard) as archive:
            files = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
        keys = sorted({name.split(".")[0] for name in files})
        for index, key in enumerate(keys):
            info = json.loads(files[f"{key}.json"])
            caption = files[f"{key}.txt"].decode()
            assert caption == info["caption"] == spec_caption(info)
            expected = Expected(f"{IMAGE}{caption}{EOC}{eos}", (files[f"{key}.jpg"],), (caption,))
            laion_expected[f"/shapes/pairs/{shard.name}#{index}"] = expected
            pairs.append((info["url"], caption, files[f"{key}.jpg"]))
    assert len(pairs) == NUM_PAIRS
    cases["laion-tar"] = Case("laion", "shapes/pairs", None, ("shapes/pairs",), laion_expected, {})

    # LAION tables: url + caption rows (JSONL), URL + TEXT columns (parquet, as LAION's own
    # metadata); images under a prefix as sha256(url) objects.
    table = root / "laion_table"
    (table / "images").mkdir(parents=True)
    for url, _, jpeg in pairs:
        (table / "images" / image_object_name(url)).write_bytes(jpeg)
    (table / "jsonl").mkdir()
    lines = [json.dumps({"url": url, "caption": caption}) + "\n" for url, caption, _ in pairs]
    (table / "jsonl" / "pairs.jsonl").write_text("".join(lines))
    write_parquet(
        table / "parquet" / "pairs.parquet",
        [{"URL": url, "TEXT": caption, "similarity": 0.3} for url, caption, _ in pairs],
        row_group_size=5,
    )
    for container, name in (("jsonl", "pairs.jsonl"), ("parquet", "pairs.parquet")):
        cases[f"laion_table-{container}"] = Case(
            "laion_table",
            f"laion_table/{container}",
            "laion_table/images",
            (f"laion_table/{container}", "laion_table/images"),
            {
                f"/laion_table/{container}/{name}#{i}": laion_expected[key]
                for i, key in enumerate(laion_expected)
            },
            {},
        )
    return root, cases


CASES = [
    "omnicorpus-jsonl",
    "omnicorpus-jsonl.gz",
    "omnicorpus-jsonl.zip",
    "obelics-parquet",
    "mmc4-jsonl.zip",
    "mmc4_wds-tar",
    "laion-tar",
    "laion_table-jsonl",
    "laion_table-parquet",
]


# ---------------------------------------------------------------- loading and checking


def case_config(case: Case, root: str, workers: int = 0) -> CorpusConfig:
    pairs = case.dataset_type.startswith("laion")
    return CorpusConfig(
        dataset_type=case.dataset_type,
        shards=f"{root}/{case.shards}",
        image_prefix=None if case.image_prefix is None else f"{root}/{case.image_prefix}",
        batch_size=BATCH_SIZE,
        max_tokens=MAX_TOKENS_PAIRS if pairs else MAX_TOKENS_INTERLEAVED,
        num_samples=len(case.expected),  # one pass
        workers=workers,
    )


def reference_labels(ids: list[int], *, pad: int, media: int, eoc: int, pairs: bool) -> list:
    """The label rules, token by token. Interleaved: -100 on pad, before the first <image>, on
    <image>, and after an <|endofchunk|> up to the next <image>. Pairs: -100 on pad, <image>."""
    labels, seen_media, after_eoc = [], False, False
    for token in ids:
        if token == media:
            seen_media, after_eoc = True, False
        ignored = token in (pad, media) or (not pairs and (not seen_media or after_eoc))
        labels.append(-100 if ignored else token)
        after_eoc = after_eoc or token == eoc
    return labels


def check_batches(batches, case: Case, root: str, tokenizer, image_processor) -> None:
    """Every sample of `batches` is the Expected of its key, with the label rules applied."""
    pairs = case.dataset_type.startswith("laion")
    max_tokens = MAX_TOKENS_PAIRS if pairs else MAX_TOKENS_INTERLEAVED
    num_slots = 1 if pairs else 6
    pad = tokenizer.pad_token_id
    media, eoc = tokenizer.convert_tokens_to_ids([IMAGE, EOC])
    assert len(batches) == len(case.expected) // BATCH_SIZE
    keys = [key.removeprefix(root) for batch in batches for key in batch["keys"]]
    assert sorted(keys) == sorted(case.expected)  # one pass: every record once
    for batch in batches:
        assert batch["input_ids"].shape == batch["labels"].shape == (BATCH_SIZE, max_tokens)
        assert batch["attention_mask"].shape == (BATCH_SIZE, max_tokens)
        assert batch["images"].shape == (BATCH_SIZE, num_slots, 1, 3, 64, 64)
        for row, key in enumerate(batch["keys"]):
            expected = case.expected[key.removeprefix(root)]
            ids = batch["input_ids"][row]
            mask = batch["attention_mask"][row]
            length = int(mask.sum())
            assert mask[:length].all() and not mask[length:].any() and length < max_tokens
            assert (ids[length:] == pad).all()
            text = tokenizer.decode(ids[:length].tolist())
            assert text == expected.text
            # the text right after each <image> is about that image
            pieces = text.split(IMAGE)[1:]
            assert len(pieces) == len(expected.captions)
            for caption, piece in zip(expected.captions, pieces, strict=True):
                assert caption in piece.split(EOC)[0]
            labels = reference_labels(ids.tolist(), pad=pad, media=media, eoc=eoc, pairs=pairs)
            assert batch["labels"][row].tolist() == labels
            slots = batch["images"][row, :, 0]
            for slot, data in enumerate(expected.images):
                image = Image.open(io.BytesIO(data)).convert("RGB")
                assert torch.equal(slots[slot], image_processor(image))
            assert not slots[len(expected.images) :].any()  # zero padding after the images


def load(case: Case, root: str, tokenizer, image_processor, workers: int = 0):
    loader = get_data(case_config(case, root, workers), image_processor, tokenizer).dataloader
    return loader, list(loader)


@pytest.mark.parametrize("name", CASES)
def test_format_loads_from_local_disk(name, formats, tokenizer, image_processor):
    root, cases = formats
    case = cases[name]
    loader, batches = load(case, str(root), tokenizer, image_processor)
    check_batches(batches, case, str(root), tokenizer, image_processor)
    assert loader.skip_counts() == case.skips


def same_stream(batches, root: str, other_batches, other_root: str) -> bool:
    """Whether two runs gave identical batches (keys relative to their roots, fingerprints)."""

    def stream(run, prefix):
        return [([k.removeprefix(prefix) for k in b["keys"]], fingerprint(b)) for b in run]

    return stream(batches, root) == stream(other_batches, other_root)


def upload_dirs(root: Path, remote: str, folders: tuple[str, ...]) -> None:
    files = [p for folder in folders for p in (root / folder).rglob("*") if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(storage.write_bytes, f"{remote}/{p.relative_to(root)}", p.read_bytes())
            for p in files
        ]
    for future in futures:
        future.result()


@pytest.mark.parametrize("name", CASES)
def test_format_from_s3_gives_the_same_batches(
    name, formats, tokenizer, image_processor, s3_bucket
):
    root, cases = formats
    case = cases[name]
    remote = f"{s3_bucket}/formats"
    upload_dirs(root, remote, case.upload)
    _, local_batches = load(case, str(root), tokenizer, image_processor)
    # one forked worker: its own S3 client and image-fetch pool
    loader, batches = load(case, remote, tokenizer, image_processor, workers=1)
    check_batches(batches, case, remote, tokenizer, image_processor)
    assert loader.skip_counts() == case.skips
    assert same_stream(batches, remote, local_batches, str(root))


@pytest.mark.parametrize("gzip_docs", [False, True])
def test_synthetic_corpus_written_straight_to_s3(
    gzip_docs, formats, tokenizer, image_processor, s3_bucket
):
    root, cases = formats
    local = root / ("shapes_gz" if gzip_docs else "shapes")
    remote = f"{s3_bucket}/shapes"
    num_pairs = 0 if gzip_docs else NUM_PAIRS
    summary = write_synthetic_corpus(
        remote,
        num_docs=NUM_DOCS,
        docs_per_shard=DOCS_PER_SHARD,
        num_pairs=num_pairs,
        pairs_per_shard=PAIRS_PER_SHARD,
        num_eval=0,
        seed=0,
        gzip_docs=gzip_docs,
    )
    assert summary["image_prefix"] == f"{remote}/images"
    assert all(uri.startswith(f"{remote}/interleaved/") for uri in summary["interleaved_shards"])
    # the same bytes as the corpus written to disk, under the same names
    local_files = {str(p.relative_to(local)): p for p in local.rglob("*") if p.is_file()}
    remote_files = {uri.removeprefix(remote + "/"): uri for uri in storage.list_files(remote)}
    assert set(remote_files) == set(local_files)
    for name, path in local_files.items():
        if name != "corpus.json":  # holds the paths
            assert storage.read_bytes(remote_files[name]) == path.read_bytes(), name
    suffix = "jsonl.gz" if gzip_docs else "jsonl"
    case = cases[f"omnicorpus-{suffix}"]
    variant = local.name
    remote_case = Case(
        "omnicorpus",
        "interleaved",
        "images",
        (),
        {key.removeprefix(f"/{variant}"): e for key, e in case.expected.items()},
        {},
    )
    _, batches = load(remote_case, remote, tokenizer, image_processor)
    check_batches(batches, remote_case, remote, tokenizer, image_processor)
    _, local_batches = load(remote_case, str(local), tokenizer, image_processor)
    assert same_stream(batches, remote, local_batches, str(local))
    if not gzip_docs:
        pairs = cases["laion-tar"]
        remote_pairs = Case(
            "laion",
            "pairs",
            None,
            (),
            {key.removeprefix("/shapes"): e for key, e in pairs.expected.items()},
            {},
        )
        _, batches = load(remote_pairs, remote, tokenizer, image_processor)
        check_batches(batches, remote_pairs, remote, tokenizer, image_processor)
        _, local_batches = load(remote_pairs, str(local), tokenizer, image_processor)
        assert same_stream(batches, remote, local_batches, str(local))


# ---------------------------------------------------------------- MMC4: files vs webdataset


@pytest.fixture(scope="module")
def competing_mmc4(tmp_path_factory, formats) -> Path:
    """One MMC4 doc whose small image A (under 10 KB) would win sentence 0 over image B, in both
    MMC4 forms: `.jsonl.zip` + image files, and the webdataset the converter makes of it."""
    root = tmp_path_factory.mktemp("competing")
    shapes = formats[0] / "shapes" / "images"
    jpegs = [p.read_bytes() for p in sorted(shapes.iterdir())[:3]]
    assert all(len(jpeg) < MMC4_MIN_IMAGE_BYTES for jpeg in jpegs)
    (root / "images").mkdir()
    (root / "images" / "a.jpg").write_bytes(jpegs[0])  # small: skipped by the 10 KB rule
    (root / "images" / "b.jpg").write_bytes(with_comment(jpegs[1], 12_000))
    (root / "images" / "c.jpg").write_bytes(with_comment(jpegs[2], 12_000))
    doc = {
        "url": "https://synthetic.invalid/competing",
        "text_list": ["Sentence zero.", "Sentence one.", "Sentence two."],
        "image_info": [
            {"image_name": name, "raw_url": f"https://x.invalid/{name}"}
            for name in ("a.jpg", "b.jpg", "c.jpg")
        ],
        # with A: A-0, B-1, C-2 (sum 2.1) beats B-0, A-1, C-2 (1.6); without A: B-0, C-2
        "similarity_matrix": [[0.9, 0.1, 0.1], [0.8, 0.5, 0.1], [0.1, 0.1, 0.7]],
    }
    (root / "docs").mkdir()
    member = {"docs_shard_0_v2.jsonl": (json.dumps(doc) + "\n").encode()}
    (root / "docs" / "docs_shard_0_v2.jsonl.zip").write_bytes(zip_bytes(member))
    convert_mmc4_to_wds(str(root / "docs"), str(root / "images"), str(root / "wds"))
    return root


@pytest.mark.parametrize(
    "dataset_type",
    ["mmc4", "mmc4_wds"],
)
def test_mmc4_images_under_10kb_take_no_part_in_the_matching(
    dataset_type, competing_mmc4, tokenizer, image_processor
):
    """As upstream: images of 10 KB or less are left out before the Hungarian matching, so B
    takes sentence zero. Both MMC4 forms of one corpus must give the same documents."""
    root = competing_mmc4
    config = CorpusConfig(
        dataset_type=dataset_type,
        shards=str(root / {"mmc4": "docs", "mmc4_wds": "wds"}[dataset_type]),
        image_prefix=str(root / "images"),
        batch_size=1,
        max_tokens=MAX_TOKENS_INTERLEAVED,
        num_samples=1,
    )
    loader = get_data(config, image_processor, tokenizer).dataloader
    (batch,) = list(loader)
    length = int(batch["attention_mask"][0].sum())
    text = tokenizer.decode(batch["input_ids"][0, :length].tolist())
    expected = f"{IMAGE}Sentence zero. Sentence one.{EOC}{IMAGE}Sentence two.{EOC}"
    assert text == expected + tokenizer.eos_token
    assert loader.skip_counts() == {"small_image": 1}

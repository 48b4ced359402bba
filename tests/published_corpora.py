"""The corpora in the forms their users download them, built from the published schemas with the
quirks real shards have (nulls, JSON-string metadata, a missing image, unicode, long documents,
a cut-off last line, empty strings), and what the loader must make of each record.

Expected texts are built here from the documented rules (shared/notes/corpora-as-published.md,
openflamingo-facts.md), independently of the loader's code: OmniCorpus's rule for OmniCorpus /
OBELICS documents, OpenFlamingo's for MMC4-style ones, and a brute-force best matching for the
Hungarian step.
"""

import hashlib
import io
import itertools
import json
import math
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE, EOC = "<image>", "<|endofchunk|>"
THRESHOLD = 0.24


@dataclass
class Layout:
    """One corpus as held on disk, and the loader's expected output for one pass."""

    dataset_type: str
    shards: str  # relative to the root
    image_prefix: str | None
    expected: dict = field(default_factory=dict)  # "shard-name#index" -> (text, [image bytes])
    doc_skips: dict = field(default_factory=dict)  # "shard-name#index" -> {reason: n}
    shard_skips: dict = field(default_factory=dict)  # shard name -> {reason: n}


def noise_png(seed: int) -> bytes:
    """A 64 px noise PNG of about 12.4 KB: over MMC4's 10 KB rule, and unique per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def solid_png(color: tuple[int, int, int]) -> bytes:
    """A one-colour 64 px PNG of a few hundred bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sha(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def cleaned(text: str, eos: str) -> str:
    """The common end of both rules: first <|endofchunk|> removed, whitespace clean-ups."""
    text = text.replace(EOC, "", 1)
    text = text.replace(f" {EOC}", EOC).replace(f"{IMAGE} ", IMAGE).replace(f" {IMAGE}", IMAGE)
    return f"{text}{EOC}{eos}"


def omnicorpus_text(texts: list, kept: set[int], eos: str) -> str:
    """OmniCorpus's rule: a kept image position is <|endofchunk|><image>, a dropped one nothing;
    the non-empty pieces joined with single spaces."""
    pieces = [EOC + IMAGE if p in kept else text for p, text in enumerate(texts)]
    return cleaned(" ".join(piece for piece in pieces if piece), eos)


def openflamingo_text(sentences: list[str], placed: set[int], eos: str) -> str:
    """OpenFlamingo's rule for MMC4: <|endofchunk|><image> prefixed to each matched sentence,
    all sentences joined with single spaces."""
    return cleaned(
        " ".join(EOC + IMAGE + s if i in placed else s for i, s in enumerate(sentences)), eos
    )


def best_matching(similarity: list[list[float]]) -> dict[int, int]:
    """{sentence: image} of the one-to-one matching with the largest total similarity (brute
    force), pairs under the threshold left out."""
    images, sentences = len(similarity), len(similarity[0])
    best, best_pairs = -math.inf, []
    if images <= sentences:
        candidates = (list(enumerate(p)) for p in itertools.permutations(range(sentences), images))
    else:
        candidates = (
            [(i, s) for s, i in enumerate(p)]
            for p in itertools.permutations(range(images), sentences)
        )
    for pairs in candidates:
        total = sum(similarity[i][s] for i, s in pairs)
        if total > best:
            best, best_pairs = total, pairs
    return {s: i for i, s in best_pairs if similarity[i][s] >= THRESHOLD}


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [x / sum(exps) for x in exps]


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> None:
    """Rows as parquet; a column some rows lack is null in those rows."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    rows = [{name: row.get(name) for name in columns} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def jsonl(records: list[dict], cut_last: bool = False) -> bytes:
    """JSON lines (unicode kept as is); with `cut_last` the last line is cut in half and has no
    newline, as a download that broke off."""
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    if cut_last:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
        return ("\n".join(lines)).encode()
    return "".join(line + "\n" for line in lines).encode()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

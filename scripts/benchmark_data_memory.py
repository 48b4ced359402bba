"""Loader memory and throughput at real shard sizes: resident memory added per loader worker and
documents/s, for a 70,000-document OmniCorpus parquet shard, the same documents as a 70,000-line
JSONL shard, and a 1 GB img2dataset tar (10,000 samples, as img2dataset writes them).

The shards are written once under --dir (about 2 GB; images from a small pool, so the disk holds
few of them). Each shard is read by `get_data` with one DataLoader worker; a thread samples the
worker's resident memory (RSS) and CPU time every 20 ms. "added" is its peak RSS minus its first
sample (the worker is forked from this process, so its first RSS is what it inherited).
Throughput is given per wall-clock second and per worker CPU-second: on a shared machine the
second is what a worker does on a core of its own. Prints one JSON line per shard;
docs/benchmarks.md has the figures, before and after, with the machine and commit.

    python scripts/benchmark_data_memory.py --dir /tmp/memshards
    PYTHONPATH=/tmp/old-checkout python scripts/benchmark_data_memory.py --dir /tmp/memshards
"""

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import open_clip
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

import open_flamingo
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.loader import get_data
from open_flamingo.src.factory import load_flamingo_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
]
UNICODE = ["Prague — Praha", "布拉格的夜晚", "café au lait", "🌃 skyline", "Ünïcödé"]


def noise_jpeg(seed: int, size: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def document(rng: np.random.Generator, index: int) -> dict:
    """An OmniCorpus document in its natural arrangement: about 8 paragraphs of 400-600
    characters around 3 images (from a pool of 256 URLs), metadata per position."""
    images, texts, metadata = [], [], []
    for position in range(11):
        if position in (1, 5, 9):
            url = f"https://example.org/img/{int(rng.integers(256))}.jpg"
            images.append(url)
            texts.append(None)
            metadata.append({"url": url, "width": 256, "height": 256, "alt": "a photo"})
        else:
            words = rng.choice(WORDS, size=int(rng.integers(80, 120)))
            texts.append(" ".join(words) + " " + UNICODE[position % len(UNICODE)])
            images.append(None)
            metadata.append(None)
    general = {"url": f"https://example.org/doc/{index}", "warc": f"<urn:uuid:{index}>"}
    return {"images": images, "texts": texts, "metadata": metadata, "general_metadata": general}


def write_shards(root: Path, num_docs: int, tar_bytes: int) -> dict[str, Path]:
    """The three shards and the documents' images; reused when already there."""
    paths = {
        "omnicorpus parquet": root / "omnicorpus" / "train-00000-of-00001.parquet",
        "omnicorpus jsonl": root / "jsonl" / "shard-00000.jsonl",
        "img2dataset tar": root / "laion" / "00000.tar",
    }
    if all(path.exists() for path in paths.values()):
        return paths
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for i in range(256):
        url = f"https://example.org/img/{i}.jpg"
        name = hashlib.sha256(url.encode()).hexdigest()
        (root / "images" / name).write_bytes(noise_jpeg(i, 256))
    rng = np.random.default_rng(0)
    docs = [document(rng, i) for i in tqdm(range(num_docs), desc="documents")]
    with open(paths["omnicorpus jsonl"], "w") as out:
        for doc in tqdm(docs, desc="jsonl"):
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    pq.write_table(pa.Table.from_pylist(docs), paths["omnicorpus parquet"], row_group_size=1000)
    del docs
    pool = [noise_jpeg(1000 + i, 320) for i in range(64)]
    per_sample = sum(map(len, pool)) / len(pool) + 2048  # + caption, json, headers
    _write_tar(paths["img2dataset tar"], pool, int(tar_bytes / per_sample))
    return paths


def _write_tar(path: Path, pool: list[bytes], samples: int) -> None:
    import tarfile

    with tarfile.open(path, "w") as archive:
        for i in tqdm(range(samples), desc="tar"):
            key = f"{i:09d}"
            caption = f"A photo number {i} of " + " ".join(WORDS[i % 7 : i % 7 + 6])
            members = {
                "jpg": pool[i % len(pool)],
                "txt": caption.encode(),
                "json": json.dumps({"key": key, "caption": caption, "status": "success"}).encode(),
            }
            for extension, content in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))


def uncompressed_size(path: Path) -> int:
    """Bytes of the shard's data uncompressed: the file itself, or parquet's row groups."""
    if path.suffix == ".parquet":
        metadata = pq.read_metadata(path)
        return sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
    return path.stat().st_size


class WorkerMemory:
    """Samples the RSS of this process's children (the loader worker) until stopped."""

    def __init__(self):
        self.first: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}  # user + system seconds, last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                self.cpu[child.pid] = times.user + times.system
                self.first.setdefault(child.pid, rss)
                self.peak[child.pid] = max(self.peak.get(child.pid, 0), rss)
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(name: str, path: Path, root: Path, args, tokenizer, image_processor) -> dict:
    pairs = name.endswith("tar")
    batch_size = 2 * args.batch_size if pairs else args.batch_size
    config = CorpusConfig(
        dataset_type="laion" if pairs else "omnicorpus",
        shards=str(path),
        image_prefix=str(root / "images"),
        batch_size=batch_size,
        max_tokens=128 if pairs else 1024,
        num_samples=batch_size * args.batches,
        workers=1,
    )
    loader = get_data(config, image_processor, tokenizer)
    docs, start = 0, time.perf_counter()
    with WorkerMemory() as memory:
        for i, batch in enumerate(loader.dataloader):
            if i == 0:
                first_batch_s = time.perf_counter() - start
            if i == args.warmup:
                timed_from, docs = time.perf_counter(), 0
                cpu_from = sum(memory.cpu.values())
            docs += batch["input_ids"].shape[0]
        elapsed = time.perf_counter() - timed_from
    cpu = sum(memory.cpu.values()) - cpu_from
    (pid,) = memory.peak  # one worker
    mib = 1 << 20
    return {
        "shard": name,
        "file_mib": round(path.stat().st_size / mib, 1),
        "uncompressed_mib": round(uncompressed_size(path) / mib, 1),
        "worker_rss_first_mib": round(memory.first[pid] / mib, 1),
        "worker_rss_peak_mib": round(memory.peak[pid] / mib, 1),
        "worker_added_mib": round((memory.peak[pid] - memory.first[pid]) / mib, 1),
        "first_batch_s": round(first_batch_s, 1),
        "docs_per_s": round(docs / elapsed, 1),
        "docs_per_worker_cpu_s": round(docs / cpu, 1),
        "batches_timed": args.batches - args.warmup,
        "code": str(Path(open_flamingo.__file__).parents[1]),
        "commit": _commit(Path(open_flamingo.__file__).parents[1]),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
    }


def _commit(folder: Path) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True
    )
    stamp = folder / "COMMIT"
    return result.stdout.strip() or (stamp.read_text().strip() if stamp.exists() else "unknown")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", required=True, help="where the shards are (written if missing)")
    parser.add_argument("--docs", type=int, default=70_000)
    parser.add_argument("--tar-gb", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="LAION batches are twice it")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--shards", nargs="+", default=None, help="names to run (default: all)")
    parser.add_argument("--tokenizer", default=str(REPO / ".cache/assets/tokenizers/gpt-neox-20b"))
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.batches:
        parser.error("need 0 <= --warmup < --batches")
    root = Path(args.dir)
    paths = write_shards(root, args.docs, int(args.tar_gb * (1 << 30)))
    tokenizer = load_flamingo_tokenizer(args.tokenizer)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    image_processor = open_clip.image_transform(224, is_train=False, mean=mean, std=std)
    for name, path in paths.items():
        if args.shards is None or name in args.shards:
            result = measure(name, path, root, args, tokenizer, image_processor)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

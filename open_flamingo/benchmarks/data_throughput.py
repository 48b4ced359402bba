"""Data-pipeline throughput: documents/s and images/s (fetch + decode + preprocess + tokenize) per
number of loader workers, from local disk or S3 (e.g. a Ceph RGW).

Prints one JSON line per (source, workers) configuration; put the numbers in docs/benchmarks.md
with the machine, the commit and this command line.
Memory per worker at real shard sizes: scripts/benchmark_data_memory.py.

Example:
    python scripts/benchmark_data.py --corpus /tmp/shapes --workers 1 2 4 --batches 40
    python scripts/benchmark_data.py --corpus s3://bench/shapes --workers 4    # AWS_ENDPOINT_URL=...
    python scripts/benchmark_data.py --make-corpus /tmp/shapes --with-rgw --workers 1 2
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.loader import get_data
from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.tools.paths import GPT_NEOX_TOKENIZER, REPO


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def ceph_rgw(command: str, root: Path) -> dict[str, str]:
    """`start` or `stop` the tests' throw-away Ceph RGW under `root` through its command line
    (tests/support/ceph_rgw.py, run from the checkout); returns the AWS variables `start`
    exports."""
    cli = [sys.executable, "-m", "tests.support.ceph_rgw", command, "--dir", str(root)]
    done = subprocess.run(cli, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cli)} failed:\n{done.stdout}{done.stderr}")
    lines = done.stdout.splitlines()
    return dict(
        line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
    )


def measure(corpus: str, dataset_type: str, workers: int, args, tokenizer, image_processor) -> dict:
    config = CorpusConfig(
        dataset_type=dataset_type,
        shards=f"{corpus}/{args.shard_dir}",
        image_prefix=f"{corpus}/images",
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        num_samples=args.batch_size * args.batches,
        workers=workers,
        resampled=True,
    )
    loader = get_data(config, image_processor, tokenizer).dataloader
    media_id = tokenizer.convert_tokens_to_ids("<image>")
    docs = images = 0
    start = None
    for i, batch in enumerate(loader):
        if i == args.warmup:  # skip worker start-up and the first shard reads
            start, docs, images = time.perf_counter(), 0, 0
        docs += batch["input_ids"].shape[0]
        images += int((batch["input_ids"] == media_id).sum())
    elapsed = time.perf_counter() - start
    return {
        "source": "s3" if corpus.startswith("s3://") else "local",
        "dataset_type": dataset_type,
        "workers": workers,
        "batch_size": args.batch_size,
        "batches_timed": args.batches - args.warmup,
        "docs_per_s": round(docs / elapsed, 1),
        "images_per_s": round(images / elapsed, 1),
        "cpus": os.cpu_count(),
        "machine": platform.node(),
        "torch": torch.__version__,
        "commit": commit(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--corpus", help="corpus root (local dir or s3://...) with shards and images/"
    )
    parser.add_argument("--make-corpus", help="write a synthetic corpus here first and use it")
    parser.add_argument(
        "--with-rgw",
        action="store_true",
        help="also upload it to a throw-away Ceph RGW and measure from there",
    )
    parser.add_argument("--dataset-type", default="omnicorpus")
    parser.add_argument("--shard-dir", default="interleaved")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--vision-encoder", default="ViT-L-14", help="open_clip name for the image transform"
    )
    parser.add_argument("--tokenizer", default=str(GPT_NEOX_TOKENIZER))
    args = parser.parse_args(argv)

    if args.make_corpus:
        write_synthetic_corpus(
            args.make_corpus,
            num_docs=2000,
            num_pairs=0,
            num_eval=0,
            docs_per_shard=100,
            pairs_per_shard=100,
            image_size=args.image_size,
            seed=0,
        )
        args.corpus = args.make_corpus
    if not args.corpus:
        parser.error("--corpus or --make-corpus is required")
    tokenizer = load_flamingo_tokenizer(args.tokenizer)
    image_processor = open_clip.create_model_and_transforms(args.vision_encoder, pretrained=None)[2]

    sources = [args.corpus]
    rgw_dir = None
    if args.with_rgw:
        from open_flamingo.data import storage

        rgw_dir = Path(tempfile.mkdtemp(prefix="bench-rgw-"))
        os.environ.update(ceph_rgw("start", rgw_dir))
        storage.s3_client().create_bucket(Bucket="bench")
        root = Path(args.corpus)
        for path in root.rglob("*"):
            if path.is_file():
                storage.write_bytes(
                    f"s3://bench/corpus/{path.relative_to(root)}", path.read_bytes()
                )
        sources.append("s3://bench/corpus")
    try:
        for source in sources:
            for workers in args.workers:
                print(
                    json.dumps(
                        measure(
                            source, args.dataset_type, workers, args, tokenizer, image_processor
                        )
                    ),
                    flush=True,
                )
    finally:
        if rgw_dir is not None:
            ceph_rgw("stop", rgw_dir)
    return 0

"""Write the seeded synthetic shapes corpus (OmniCorpus docs, LAION pairs, eval split).

Example:
    python scripts/make_synthetic_corpus.py --out /data/shapes --num-docs 2000 --num-pairs 4000
    python scripts/make_synthetic_corpus.py --out s3://bucket/shapes --gzip

Prints a summary (paths and counts) as JSON; it is also written to <out>/corpus.json.
"""

import argparse
import json

from open_flamingo.data.synthetic import write_synthetic_corpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="local directory or s3://bucket/prefix")
    parser.add_argument("--num-docs", type=int, default=1000, help="interleaved documents")
    parser.add_argument("--num-pairs", type=int, default=1000, help="LAION-style image-text pairs")
    parser.add_argument("--num-eval", type=int, default=200, help="held-out captioned images")
    parser.add_argument("--docs-per-shard", type=int, default=100)
    parser.add_argument("--pairs-per-shard", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="write .jsonl.gz document shards")
    args = parser.parse_args(argv)
    for name in ("docs_per_shard", "pairs_per_shard", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("num_docs", "num_pairs", "num_eval"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    summary = write_synthetic_corpus(
        args.out,
        num_docs=args.num_docs,
        num_pairs=args.num_pairs,
        num_eval=args.num_eval,
        docs_per_shard=args.docs_per_shard,
        pairs_per_shard=args.pairs_per_shard,
        image_size=args.image_size,
        seed=args.seed,
        gzip_docs=args.gzip,
    )
    print(json.dumps(summary, indent=2))
    return summary

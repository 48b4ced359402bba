"""The demo's optional mixture run (`make demo MIXTURE=1`, `scripts/demo.py --mixture`): the
synthetic shapes corpus's OmniCorpus documents and its text-only documents drawn 70 / 30, and
its LAION pairs every step, as a `--mixture` spec (open_flamingo/train/mixture.py)."""

import json
from pathlib import Path

from open_flamingo.demo.settings import MAX_TOKENS, Settings

WEIGHTS = {"shapes-docs": 0.7, "shapes-text": 0.3}


def write_mixture_spec(path: Path, settings: Settings, corpus: dict) -> Path:
    """The spec of the demo's mixture, for `settings.steps` micro-steps, written to `path`."""
    max_interleaved, max_pairs = MAX_TOKENS[settings.lm]
    sources = [
        {
            "name": "shapes-docs",
            "type": "omnicorpus",
            "shards": str(Path(corpus["interleaved_shards"][0]).parent),
            "image_prefix": corpus["image_prefix"],
            "weight": WEIGHTS["shapes-docs"],
            "batch_size": settings.batch_interleaved,
            "max_tokens": max_interleaved,
        },
        {
            "name": "shapes-text",
            "type": "text",
            "shards": str(Path(corpus["text_shards"][0]).parent),
            "weight": WEIGHTS["shapes-text"],
            "batch_size": settings.batch_interleaved,
            "max_tokens": max_interleaved,
        },
        {
            "name": "shapes-pairs",
            "type": "laion",
            "shards": str(Path(corpus["pair_shards"][0]).parent),
            "batch_size": settings.batch_laion,
            "max_tokens": max_pairs,
            "loss_multiplier": 1.0,
        },
    ]
    path.write_text(json.dumps({"steps": settings.steps, "sources": sources}, indent=2))
    return path

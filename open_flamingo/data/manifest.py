"""Which shards a dataset has, found at run time: nothing about a dataset is written into code.

A shard spec is one of:
* a directory or key prefix (`/data/omnicorpus/`, `s3://bucket/omnicorpus`): every file under it
  with a shard suffix (`.jsonl`, `.jsonl.gz`, `.jsonl.zip`, `.zip`, `.parquet`, `.tar`);
* a manifest file written by `scripts/make_manifest.py` (`*.json`);
* brace patterns as in webdataset (`s3://b/laion/{00000..00099}.tar`), or several specs joined
  with `::`.
"""

import json
from concurrent.futures import ThreadPoolExecutor

from braceexpand import braceexpand

from . import storage
from .shards import SHARD_SUFFIXES, iter_records
from .skips import SkipCounter


def is_shard(name: str) -> bool:
    return name.endswith(SHARD_SUFFIXES)


def resolve_shards(spec: str) -> list[str]:
    """The shard URIs a spec names, in a stable (sorted per prefix) order."""
    shards: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        if "{" in part:
            shards.extend(braceexpand(part))
        elif part.endswith(".json"):
            manifest = json.loads(storage.read_bytes(part))
            shards.extend(entry["uri"] for entry in manifest["shards"])
        elif is_shard(part):
            shards.append(part)
        else:
            shards.extend(uri for uri in storage.list_files(part) if is_shard(uri))
    if not shards:
        raise ValueError(
            f"No shards found for {spec!r} (shard suffixes: {', '.join(SHARD_SUFFIXES)})"
        )
    return shards


def count_records(uri: str) -> dict:
    """Number of readable records in one shard, and the skips met while reading it."""
    skips = SkipCounter(log_interval_s=float("inf"))
    data = storage.read_bytes(uri)
    records = sum(1 for _ in iter_records(uri, data, skips))
    return {"uri": uri, "records": records, "bytes": len(data), "skipped": skips.as_dict()}


def build_manifest(spec: str, threads: int = 8) -> dict:
    """A manifest of every shard a spec names, with record counts (read in parallel)."""
    shards = resolve_shards(spec)
    with ThreadPoolExecutor(threads) as pool:
        entries = list(pool.map(count_records, shards))
    return {
        "spec": spec,
        "shards": entries,
        "records": sum(e["records"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
    }

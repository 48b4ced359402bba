"""Which shards a dataset has, found at run time: nothing about a dataset is written into code.

A shard spec is one of:
* a directory or key prefix (`/data/omnicorpus/`, `s3://bucket/omnicorpus`): every file under it
  with a shard suffix (`.jsonl`, `.jsonl.gz`, `.jsonl.zip`, `.zip`, `.parquet`, `.tar`);
* a shard file itself;
* a manifest file written by `scripts/make_manifest.py` (`*.json`);
* brace patterns as in webdataset (`s3://b/laion/{00000..00099}.tar`), or several specs joined
  with `::`. A brace pattern may also expand to directories, prefixes or manifests.

A manifest is JSON: `{"version": 1, "spec", "shards": [{"uri", "records", "bytes", "skipped"},
...], "records", "bytes", "skipped", "errors"}`. `records` counts the records a shard yields to
the loader; `skipped` counts its unreadable lines / records by reason (as the loader counts them).
A shard that could not be read at all has `"error"` instead of counts, and stays listed (the
loader counts it as `shard_unreadable` if it is still unreadable then). Only `shards[*].uri` is
needed to load: a hand-written `{"shards": [{"uri": ...}]}` works, and a relative `uri` is taken
relative to the manifest's own folder or prefix.
"""

import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

from braceexpand import braceexpand

from . import storage
from .shards import SHARD_SUFFIXES, iter_records
from .skips import SkipCounter

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".json"


def is_shard(name: str) -> bool:
    """Whether `name` ends with a shard suffix (case-insensitive, as the shard readers)."""
    return name.lower().endswith(SHARD_SUFFIXES)


def is_manifest(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIX)


def resolve_shards(spec: "str | os.PathLike") -> list[str]:
    """The shard URIs a spec names, in a stable order: per part of the spec, sorted for a
    directory / prefix, in file order for a manifest, in pattern order for a brace pattern.
    Raises ValueError when a part (or an item of a brace pattern) names no shard: a mistyped
    path must not leave its part of the data out unnoticed."""
    spec = os.fspath(spec)
    shards: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        expansions = braceexpand(part) if "{" in part else [part]
        for item in expansions:
            found = _resolve_one(item)
            if not found:
                raise _no_shards(item, spec)
            shards.extend(found)
    if not shards:
        raise _no_shards(spec, spec)
    return shards


def _no_shards(item: str, spec: str) -> ValueError:
    where = repr(item) if item == spec else f"{item!r} (in {spec!r})"
    return ValueError(f"No shards found for {where}; shard suffixes: {', '.join(SHARD_SUFFIXES)}")


def _resolve_one(item: str) -> list[str]:
    if is_shard(item):
        return [item]
    if is_manifest(item):
        return read_manifest_shards(item)
    return [uri for uri in storage.list_files(item) if is_shard(uri)]


def read_manifest_shards(uri: str) -> list[str]:
    """The shard URIs listed by the manifest at `uri`. Raises StorageError when it cannot be
    read, ValueError when it is not a shard manifest."""
    data = storage.read_bytes(uri)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8; see shards.decode_json
        raise ValueError(f"{uri} is not a shard manifest: invalid JSON ({error})") from error
    entries = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("uri"), str) and entry["uri"]
        for entry in entries
    ):
        raise ValueError(
            f'{uri} is not a shard manifest: expected {{"shards": [{{"uri": ...}}, ...]}} '
            "as written by scripts/make_manifest.py"
        )
    base = storage.parse_location(uri)
    folder = (
        storage.Location(base.bucket, base.key.rpartition("/")[0], base.profile)
        if base.is_s3
        else storage.Location(None, os.path.dirname(base.key))
    )
    return [_absolute(entry["uri"], folder) for entry in entries]


def _absolute(uri: str, folder: storage.Location) -> str:
    """`uri` as is when it is an S3 URI or an absolute path, else taken relative to `folder`
    (`..` allowed, but not above the bucket)."""
    if storage.parse_location(uri).is_s3 or os.path.isabs(uri):
        return uri
    if not folder.is_s3:
        return os.path.normpath(os.path.join(folder.key, uri))
    key = posixpath.normpath(posixpath.join(folder.key, uri))
    if key == ".." or key.startswith("../"):
        raise ValueError(f"manifest entry {uri!r} leaves the bucket of {folder}")
    return str(storage.Location(folder.bucket, key, folder.profile))


def count_records(uri: str, retry_deadline_s: float = 0.0) -> dict:
    """Number of readable records in one shard, its size, and the skips met while reading it
    (by reason). Transient storage errors are retried for `retry_deadline_s`; a shard that still
    cannot be read raises StorageError."""
    skips = SkipCounter(log_interval_s=float("inf"))
    data = storage.retry_transient(lambda: storage.read_bytes(uri), retry_deadline_s)
    records = sum(1 for _ in iter_records(uri, data, skips))
    return {"uri": uri, "records": records, "bytes": len(data), "skipped": skips.as_dict()}


def _count_or_error(uri: str, retry_deadline_s: float) -> dict:
    try:
        return count_records(uri, retry_deadline_s)
    except storage.StorageError as error:
        return {"uri": uri, "error": str(error)}


def build_manifest(spec: str, threads: int = 8, retry_deadline_s: float = 60.0) -> dict:
    """A manifest of every shard a spec names, with record counts read in parallel by `threads`
    threads. Local shard paths are made absolute, so the manifest works from any directory.
    Shards that cannot be read are listed with an `"error"` (and counted in `errors`)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    shards = [
        uri if storage.parse_location(uri).is_s3 else os.path.abspath(uri)
        for uri in resolve_shards(spec)
    ]
    with ThreadPoolExecutor(min(threads, len(shards))) as pool:
        entries = list(pool.map(lambda uri: _count_or_error(uri, retry_deadline_s), shards))
    skipped: dict[str, int] = {}
    for entry in entries:
        for reason, n in entry.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {
        "version": MANIFEST_VERSION,
        "spec": spec,
        "shards": entries,
        "records": sum(entry.get("records", 0) for entry in entries),
        "bytes": sum(entry.get("bytes", 0) for entry in entries),
        "skipped": skipped,
        "errors": sum("error" in entry for entry in entries),
    }

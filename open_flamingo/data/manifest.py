"""Which shards a dataset has, found at run time: nothing about a dataset is written into code.

A shard spec is one of:
* a directory or key prefix (`/data/omnicorpus/`, `s3://bucket/omnicorpus`): every file under it
  with a shard suffix of the dataset type (formats.py; without a type: `.jsonl`, `.jsonl.gz`,
  `.jsonl.zip`, `.zip`, `.parquet`, `.tar`). For a type that reads `.json`, such a file is a
  shard when it holds a JSON array (OmniCorpus's converted annotations); manifests and
  img2dataset's `_stats.json` are not. A folder that holds files but none of the type's says
  what it holds;
* a shard file itself (with a `.txt` too: OmniCorpus's LAION-En2B rows);
* a manifest file written by `scripts/make_manifest.py` (a `.json` file holding an object);
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from braceexpand import braceexpand

from . import storage
from .shards import SHARD_SUFFIXES, open_shard
from .skips import SkipCounter

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".json"
# Shards by their name alone, in a folder of any dataset type (`.json` is looked into, and a
# `.txt` is only a shard of a type that reads them: a folder's README.txt is not).
LISTED_SUFFIXES = tuple(s for s in SHARD_SUFFIXES if s not in (".json", ".txt"))
IMG2DATASET_SIDECARS = (".parquet", "_stats.json")  # written beside each of its tars


def is_shard(name: str, suffixes: tuple[str, ...] = LISTED_SUFFIXES) -> bool:
    """Whether `name` ends with one of `suffixes` (case-insensitive, as the shard readers)."""
    return name.lower().endswith(suffixes)


def is_manifest(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIX)


def resolve_shards(spec: "str | os.PathLike", fmt=None) -> list[str]:
    """The shard URIs a spec names, in a stable order: per part of the spec, sorted for a
    directory / prefix, in file order for a manifest, in pattern order for a brace pattern.
    `fmt` (a formats.DatasetFormat) limits them to the files its dataset type reads. Raises
    ValueError when a part (or an item of a brace pattern) names no shard: a mistyped path
    must not leave its part of the data out unnoticed."""
    spec = os.fspath(spec)
    shards: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        expansions = braceexpand(part) if "{" in part else [part]
        for item in expansions:
            found = _resolve_one(item, fmt)
            if not found:
                raise _no_shards(item, spec, fmt)
            shards.extend(found)
    if not shards:
        raise _no_shards(spec, spec, fmt)
    return shards


def _no_shards(item: str, spec: str, fmt, held: list[str] | None = None) -> ValueError:
    where = repr(item) if item == spec else f"{item!r} (in {spec!r})"
    suffixes = fmt.shard_suffixes if fmt else LISTED_SUFFIXES
    reads = f"dataset type {fmt.name} reads" if fmt else "shard suffixes:"
    if not held:
        return ValueError(f"No shards found for {where}; {reads} {', '.join(suffixes)}")
    counts = Counter(_kind_of(uri) for uri in held)
    holds = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    message = f"No shards found for {where}: it holds {holds}; {reads} {', '.join(suffixes)}"
    if set(counts) <= set(IMG2DATASET_SIDECARS) and fmt and ".tar" in fmt.shard_suffixes:
        message += (
            ". These are img2dataset's sidecar files: the .parquet tables list every download "
            "it attempted (failures too) and _stats.json its counts; the samples are the .tar "
            "files it writes beside them, and there are none here. Point at the folder with "
            "the tars (did the download finish?)"
        )
    return ValueError(message)


def _kind_of(uri: str) -> str:
    """A file's kind for messages: `_stats.json`, a shard suffix, or its last extension."""
    lowered = uri.lower()
    if lowered.endswith("_stats.json"):
        return "_stats.json"
    for suffix in SHARD_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    name = lowered.rpartition("/")[2]
    return "." + name.rpartition(".")[2] if "." in name else "files without extension"


def _resolve_one(item: str, fmt) -> list[str]:
    suffixes = fmt.shard_suffixes if fmt else SHARD_SUFFIXES
    if is_manifest(item):
        if _json_kind(item) != "array":
            return read_manifest_shards(item)
        if ".json" not in suffixes:
            raise ValueError(
                f"{item} holds a JSON array, not a shard manifest, and dataset type {fmt.name} "
                f"reads {', '.join(suffixes)}: is the dataset type right?"
            )
        return [item]
    if is_shard(item, SHARD_SUFFIXES):
        if not is_shard(item, suffixes):
            raise ValueError(
                f"{item} is not a shard of dataset type {fmt.name}, which reads "
                f"{', '.join(suffixes)}: is the dataset type right?"
            )
        return [item]
    held = storage.list_files(item)
    listed = suffixes if fmt else LISTED_SUFFIXES
    named = [uri for uri in held if is_shard(uri, listed) and _kind_of(uri) != "_stats.json"]
    json_files = [uri for uri in named if is_manifest(uri)]
    with ThreadPoolExecutor(16) as pool:  # one small ranged read per .json file
        kinds = dict(zip(json_files, pool.map(_json_kind, json_files), strict=True))
    shards = [uri for uri in named if kinds.get(uri, "array") == "array"]
    if held and not shards:
        raise _no_shards(item, item, fmt, held)
    return shards


def _json_kind(uri: str) -> str:
    """The kind of a `.json` file by its first character: "array", "object" or "other"."""
    head = storage.read_range(uri, 0, 256).decode("utf-8", "replace")
    first = head.lstrip("\ufeff \t\r\n")[:1]
    return {"[": "array", "{": "object"}.get(first, "other")


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
    records = open_shard(uri, skips, retry_deadline_s=retry_deadline_s)
    count = len(records)
    records.close()
    size = storage.retry_transient(lambda: storage.size(uri), retry_deadline_s)
    return {"uri": uri, "records": count, "bytes": size, "skipped": skips.as_dict()}


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

"""The records of one shard: JSON lines (plain, gzip, zip), JSON arrays, Parquet, webdataset tars.

`open_shard` indexes a shard and returns its readable records (`ShardRecords`): `indices[j]` is
the position of record j in the shard (the n-th line, array element, row or tar sample, bad
ones included) and `read(j)` reads it when the loader gets to it. What a worker holds per shard
is the index plus at most the shard's bytes (blobs.py: local files are read in place), Arrow
row groups for Parquet, never a Python object per record. `iter_records` reads a shard given as
bytes, for tools and tests.

Formats, by suffix:
- `.jsonl`, `.txt` (OmniCorpus's LAION-En2B rows), `.jsonl.gz`: one JSON object per line.
- `.jsonl.zip`, `.zip`: the `.jsonl` members, in name order, indexed as one sequence.
- `.json`: one JSON array of objects (OmniCorpus's converted annotations).
- `.parquet`: one dict per row.
- `.tar` (webdataset): see tar_shards.py.

Bad records are skipped and counted in a `SkipCounter`; a shard that ends early (truncated
download, partial upload) yields what it holds, counts "truncated_shard" and stops. Nothing here
raises on bad data; an unsupported file name raises ValueError, an unreadable shard
StorageError.
"""

import bisect
import struct
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator
from typing import Protocol

from .blobs import Blob, BlobFile, MemoryBlob, gunzip, open_blob
from .json_shards import JsonSpans, decode_json, index_array, index_lines
from .skips import SkipCounter
from .tar_shards import TarSamples, index_tar, tar_bytes, tar_sample_key

__all__ = [
    "SHARD_SUFFIXES",
    "ParquetRows",
    "ShardRecords",
    "TarSamples",
    "decode_json",
    "iter_records",
    "open_shard",
    "shard_suffix",
    "tar_bytes",
    "tar_sample_key",
]

# Longest first: a name is matched against these in order.
SHARD_SUFFIXES = (".jsonl.gz", ".jsonl.zip", ".jsonl", ".json", ".txt", ".zip", ".parquet", ".tar")
# What zipfile raises on damaged archives (RuntimeError: encrypted; NotImplementedError: unknown
# compression; ValueError, IndexError, struct.error: garbled headers and offsets).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    IndexError,
    struct.error,
    RuntimeError,
    NotImplementedError,
)


class ShardRecords(Protocol):
    """The readable records of a shard that a reader keeps, in shard order."""

    indices: array  # position in the shard of each kept record

    def __len__(self) -> int: ...

    def read(self, j: int) -> dict:
        """Record j; raises StorageError when its bytes can no longer be read."""

    def close(self) -> None: ...


def shard_suffix(name: str) -> str:
    """The entry of SHARD_SUFFIXES that `name` ends with (case-insensitive); ValueError if none."""
    lowered = name.lower()
    for suffix in SHARD_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    raise ValueError(
        f"Unsupported shard {name!r}: expected a name ending in one of {', '.join(SHARD_SUFFIXES)}"
    )


def _all(index: int) -> bool:
    return True


def open_shard(
    uri: str,
    skips: SkipCounter,
    *,
    keep: Callable[[int], bool] = _all,
    retry_deadline_s: float = 0.0,
) -> ShardRecords:
    """Index shard `uri` and return the readable records whose index `keep` accepts (only those
    are checked, and only their problems counted). Raises StorageError when the shard cannot be
    read, after retrying transient errors for `retry_deadline_s`."""
    suffix = shard_suffix(uri)
    return _index(uri, suffix, open_blob(uri, retry_deadline_s), skips, keep)


def iter_records(
    name: str, data: bytes, skips: SkipCounter, *, keep: Callable[[int], bool] = _all
) -> Iterator[tuple[int, dict]]:
    """Yield `(record_index, record)` for the readable records of shard `name` (its bytes are
    `data`) whose index `keep` accepts; the others are passed over unchecked."""
    records = _index(name, shard_suffix(name), MemoryBlob(data), skips, keep)
    try:
        for j in range(len(records)):
            yield records.indices[j], records.read(j)
    finally:
        records.close()


def _index(name: str, suffix: str, blob: Blob, skips, keep) -> ShardRecords:
    if suffix == ".tar":
        return index_tar(name, blob, skips, keep=keep)
    if suffix == ".parquet":
        return _index_parquet(name, blob, skips, keep)
    spans = JsonSpans()
    if suffix in (".jsonl", ".txt"):
        index_lines(name, blob, spans, skips, keep=keep)
    elif suffix == ".jsonl.gz":
        text, complete = gunzip(name, blob, skips)
        blob.close()
        index_lines(name, text, spans, skips, keep=keep, complete=complete)
    elif suffix == ".json":
        index_array(name, blob, spans, skips, keep=keep)
    else:
        _index_zip(name, blob, spans, skips, keep)
    return spans


def _index_zip(name: str, blob: Blob, spans: JsonSpans, skips, keep) -> None:
    """The `.jsonl` members of a zip, in name order, numbered as one sequence; each member is
    kept decompressed while it holds kept records."""
    try:
        archive = zipfile.ZipFile(BlobFile(blob))
    except _ZIP_ERRORS as error:
        # The central directory sits at the end of a zip, so a cut zip cannot be opened at all.
        skips.count("truncated_shard", f"{name}: {error}")
        blob.close()
        return
    with archive:
        members = sorted(
            info.filename
            for info in archive.infolist()
            if info.filename.lower().endswith(".jsonl")  # (folders end in "/")
        )
        next_index = 0
        for member in members:
            try:
                text = archive.read(member)
            except _ZIP_ERRORS as error:
                skips.count("corrupt_shard", f"{name}/{member}: {error}")
                break
            next_index = index_lines(
                f"{name}/{member}",
                MemoryBlob(text),
                spans,
                skips,
                keep=keep,
                first_index=next_index,
            )
    blob.close()


class ParquetRows:
    """The kept rows of a Parquet shard, as decoded Arrow row groups (columnar: about the data's
    own size, not a Python object per row); a row becomes a dict when it is read."""

    def __init__(self):
        self.indices = array("q")
        self._tables: list = []
        self._first: list[int] = []  # position in `indices` of each table's first row

    def add(self, table, indices: list[int]) -> None:
        self._first.append(len(self.indices))
        self._tables.append(table)
        self.indices.extend(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, j: int) -> dict:
        group = bisect.bisect_right(self._first, j) - 1
        return self._tables[group].slice(j - self._first[group], 1).to_pylist()[0]

    def close(self) -> None:
        self._tables.clear()


def _read_row_groups(name: str, table_file, rows: ParquetRows, skips, keep) -> None:
    """Add the kept rows of each row group to `rows`, until one cannot be decoded."""
    import pyarrow as pa

    first_row = 0
    for group in range(table_file.num_row_groups):
        num_rows = table_file.metadata.row_group(group).num_rows
        kept = [r for r in range(num_rows) if keep(first_row + r)]
        if kept:
            try:
                table = table_file.read_row_group(group, use_threads=False)
                if len(kept) < num_rows:
                    table = table.take(kept)
            except (pa.ArrowException, OSError, ValueError) as error:  # ValueError: bad UTF-8
                skips.count("corrupt_shard", f"{name} row group {group}: {error}")
                return
            rows.add(table, [first_row + r for r in kept])
        first_row += num_rows


def _index_parquet(name: str, blob: Blob, skips, keep) -> ParquetRows:
    """Decode the row groups that hold kept rows. A file without a readable footer is
    "truncated_shard"; a row group that cannot be decoded is "corrupt_shard", and reading stops
    there (the rows before stay)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ParquetRows()
    source = pa.py_buffer(blob.buffer()) if isinstance(blob, MemoryBlob) else blob.path
    # Decoded with the C library's allocator (the reader takes the pool current when it is
    # opened): Arrow's default, mimalloc, kept about a third more resident memory around the
    # same data. Each buffer remembers its pool.
    default_pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        table_file = pq.ParquetFile(source)
        _read_row_groups(name, table_file, rows, skips, keep)
        table_file.close()
    except (pa.ArrowException, OSError, ValueError) as error:
        # The footer (schema, row groups) is at the end: a cut file has none.
        skips.count("truncated_shard", f"{name}: {error}")
    finally:
        pa.set_memory_pool(default_pool)
        blob.close()
    pa.system_memory_pool().release_unused()  # the decoder's scratch memory, back to the OS
    return rows

"""Records out of one shard's bytes: JSONL (plain, gzip, zip), Parquet and webdataset tars.

`iter_records` yields `(record_index, record)`. The index is the position of the record in the
shard (the n-th line, row or tar sample, bad ones included), so a loader resumes a shard exactly
by passing `start=` the next index; records before `start` are passed over without parsing.

Bad records are skipped and counted in a `SkipCounter`; a shard that ends early (truncated
download, partial upload) yields what it holds, counts "truncated_shard" and stops. Nothing here
raises on bad data; only an unsupported file name raises ValueError.
"""

import codecs
import io
import json
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator

from .skips import SkipCounter, SkipSample

# Longest first: a name is matched against these in order.
SHARD_SUFFIXES = (".jsonl.gz", ".jsonl.zip", ".jsonl", ".zip", ".parquet", ".tar")

_TAR_BLOCK = 512
_TAR_END_OF_ARCHIVE = b"\0" * (2 * _TAR_BLOCK)
_GZIP_CHUNK = 1 << 20
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff); json.loads keeps a lone one as is.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
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


def shard_suffix(name: str) -> str:
    """The entry of SHARD_SUFFIXES that `name` ends with (case-insensitive); ValueError if none."""
    lowered = name.lower()
    for suffix in SHARD_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    raise ValueError(
        f"Unsupported shard {name!r}: expected a name ending in one of {', '.join(SHARD_SUFFIXES)}"
    )


def iter_records(
    name: str, data: bytes, skips: SkipCounter, start: int = 0
) -> Iterator[tuple[int, dict]]:
    """Yield `(record_index, record)` for the records of shard `name` whose index is >= `start`.

    Formats, by suffix:
    - `.jsonl`, `.jsonl.gz`: one JSON object per line.
    - `.jsonl.zip`, `.zip`: the `.jsonl` members, in name order, indexed as one sequence.
    - `.parquet`: one dict per row.
    - `.tar` (webdataset): consecutive members with the same key (the path up to the first dot
      of the file name) form one record `{"__key__": key, ext: bytes, ...}`, e.g.
      `000001.jpg` + `000001.txt` -> `{"__key__": "000001", "jpg": b"...", "txt": b"..."}`.

    Skip reasons counted in `skips`: "invalid_json", "non_utf8", "schema" (a JSON value that is
    not an object), "truncated_shard" (the shard ends early), "corrupt_shard" (undecodable
    compressed data), "bad_tar_member", "duplicate_tar_member".
    """
    suffix = shard_suffix(name)
    if suffix == ".jsonl":
        yield from _iter_json_lines(name, data, skips, start, first_index=0)
    elif suffix == ".jsonl.gz":
        yield from _iter_gzip_jsonl(name, data, skips, start)
    elif suffix in (".jsonl.zip", ".zip"):
        yield from _iter_zip_jsonl(name, data, skips, start)
    elif suffix == ".parquet":
        yield from _iter_parquet(name, data, skips, start)
    else:
        yield from _iter_tar(name, data, skips, start)


def _iter_json_lines(
    name: str,
    data: bytes,
    skips: SkipCounter,
    start: int,
    first_index: int,
    complete: bool = True,
) -> Iterator[tuple[int, dict]]:
    """Parse the lines of `data`, numbering them from `first_index`.

    The last line of a complete stream may lack its newline; it is "truncated_shard" only if it
    then fails to parse. With `complete=False` (a decompressor stopped early, and counted why)
    an unterminated last line is dropped without trying to parse it.
    """
    lines = data.split(b"\n")
    ends_with_newline = lines[-1] == b""
    if ends_with_newline:
        lines.pop()
    for offset, line in enumerate(lines):
        index = first_index + offset
        if index < start:
            continue
        is_unterminated = offset == len(lines) - 1 and not ends_with_newline
        if is_unterminated and not complete:
            return  # the decompressor stopped inside this line (and counted why)
        if offset == 0 and first_index == 0 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        try:
            record = decode_json(line)
        except SkipSample as skip:
            if is_unterminated and skip.reason == "invalid_json":
                skips.count("truncated_shard", f"{name}: last line {index} is cut: {skip.detail}")
                return
            skips.count(skip.reason, f"{name} line {index}: {skip.detail}")
            continue
        if not isinstance(record, dict):
            skips.count("schema", f"{name} line {index}: a {type(record).__name__}, not an object")
            continue
        yield index, record


def decode_json(data: bytes):
    """The JSON value of UTF-8 `data`. Raises SkipSample "non_utf8" for bytes that are not UTF-8
    and for strings that UTF-8 cannot hold (a lone surrogate escape such as "\\ud800", which
    would fail later in a tokenizer or a URL hash), "invalid_json" for whatever json.loads
    refuses: syntax, integers of over 4,300 digits (ValueError), nesting deeper than Python's
    recursion limit (RecursionError)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SkipSample("non_utf8", str(error)) from error
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SkipSample("invalid_json", f"{type(error).__name__}: {error}") from error
    if _SURROGATE_ESCAPE.search(data):  # rare: only then is every string checked
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise SkipSample("non_utf8", f"lone surrogate escape: {error}") from error
    return value


def _iter_gzip_jsonl(
    name: str, data: bytes, skips: SkipCounter, start: int
) -> Iterator[tuple[int, dict]]:
    text, complete = _gunzip(name, data, skips)
    yield from _iter_json_lines(name, text, skips, start, first_index=0, complete=complete)


def _gunzip(name: str, data: bytes, skips: SkipCounter) -> tuple[bytes, bool]:
    """Decompress all gzip members of `data`; on early end or bad bytes keep what came out."""
    pieces: list[bytes] = []
    remaining = data
    while remaining:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            for begin in range(0, len(remaining), _GZIP_CHUNK):
                pieces.append(decompressor.decompress(remaining[begin : begin + _GZIP_CHUNK]))
                if decompressor.eof:
                    break
        except zlib.error as error:
            skips.count("corrupt_shard", f"{name}: {error}")
            return b"".join(pieces), False
        if not decompressor.eof:
            skips.count("truncated_shard", f"{name}: gzip stream ends early")
            return b"".join(pieces), False
        remaining = decompressor.unused_data
    return b"".join(pieces), True


def _iter_zip_jsonl(
    name: str, data: bytes, skips: SkipCounter, start: int
) -> Iterator[tuple[int, dict]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as error:
        # The central directory sits at the end of a zip, so a cut zip cannot be opened at all.
        skips.count("truncated_shard", f"{name}: {error}")
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
                return
            yield from _iter_json_lines(f"{name}/{member}", text, skips, start, next_index)
            next_index += text.count(b"\n") + (0 if text.endswith(b"\n") or not text else 1)


def _iter_parquet(
    name: str, data: bytes, skips: SkipCounter, start: int
) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as error:
        # The footer (schema, row groups) is at the end: a cut file has none.
        skips.count("truncated_shard", f"{name}: {error}")
        return
    first_row = 0
    for group in range(table_file.num_row_groups):
        num_rows = table_file.metadata.row_group(group).num_rows
        if first_row + num_rows <= start:
            first_row += num_rows
            continue
        try:
            rows = table_file.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as error:  # ValueError: bad UTF-8
            skips.count("corrupt_shard", f"{name} row group {group}: {error}")
            return
        for offset, row in enumerate(rows):
            if first_row + offset >= start:
                yield first_row + offset, row
        first_row += num_rows


def tar_sample_key(member_name: str) -> tuple[str, str] | None:
    """webdataset's split of a member name: `a/b/000001.seg.json` -> ("a/b/000001", "seg.json").

    None for names whose file name has no extension (or starts with a dot).
    """
    directory, _, file_name = member_name.rpartition("/")
    stem, dot, extension = file_name.partition(".")
    if not dot or not stem or not extension:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _iter_tar(name: str, data: bytes, skips: SkipCounter, start: int) -> Iterator[tuple[int, dict]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            yield from _tar_samples(name, archive, data, skips, start)
    except (tarfile.TarError, OSError, EOFError) as error:
        # The sample being collected when the archive broke off is dropped: it may be partial.
        skips.count("truncated_shard", f"{name}: {error}")


def _tar_samples(
    name: str, archive: tarfile.TarFile, data: bytes, skips: SkipCounter, start: int
) -> Iterator[tuple[int, dict]]:
    index, key, record = -1, None, {}
    end_of_members = 0
    for member in archive:
        end_of_members = member.offset_data + _tar_padded(member.size)
        if not member.isfile():
            continue
        split = tar_sample_key(member.name)
        if split is None:
            skips.count("bad_tar_member", f"{name}: {member.name!r} has no extension")
            continue
        member_key, extension = split
        if member_key != key:
            if key is not None and index >= start:
                yield index, record
            index, key, record = index + 1, member_key, {"__key__": member_key}
        if index < start:
            continue  # not read: resuming passes over earlier samples cheaply
        if extension in record:
            skips.count("duplicate_tar_member", f"{name}: {member.name!r}")
            continue
        record[extension] = archive.extractfile(member).read()
    # tarfile ends quietly at a cut or garbled header; a whole archive ends in two zero blocks.
    if data[end_of_members : end_of_members + len(_TAR_END_OF_ARCHIVE)] != _TAR_END_OF_ARCHIVE:
        raise tarfile.ReadError(f"no end-of-archive marker after byte {end_of_members}")
    if key is not None and index >= start:
        yield index, record


def _tar_padded(size: int) -> int:
    return -(-size // _TAR_BLOCK) * _TAR_BLOCK


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar archive of `(member name, content)` pairs, reproducible (fixed mtime, owner, mode)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for member_name, content in members:
            info = tarfile.TarInfo(member_name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()

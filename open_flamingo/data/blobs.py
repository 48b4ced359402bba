"""A shard's bytes with random access, held no more than once.

The loader reads a shard's records in a seeded shuffled order, so it needs random access to
them. A local file is read in place (`FileBlob`: `os.pread`, nothing held but the file
descriptor). An S3 object is fetched once, whole, and kept as those bytes (`MemoryBlob`); a
compressed container (gzip, zip members) is kept decompressed. Per loader worker that is at most
about the uncompressed size of the shard it reads, never Python objects for every record.
"""

import contextlib
import io
import os
import zlib
from collections.abc import Iterator

from . import storage
from .skips import SkipCounter

CHUNK_BYTES = 8 << 20  # sequential scans read this much at a time


class MemoryBlob:
    """Bytes already in memory (an S3 object, a decompressed stream)."""

    def __init__(self, data: bytes | bytearray):
        self._view = memoryview(data)
        self.size = len(self._view)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._view[offset : offset + length])

    def buffer(self) -> memoryview:
        """The bytes themselves, without a copy (e.g. for pyarrow)."""
        return self._view

    def close(self) -> None:
        view, self._view = self._view, memoryview(b"")
        # Still exported (e.g. to Arrow): then it is freed with its last user.
        with contextlib.suppress(BufferError):
            view.release()


class FileBlob:
    """A local file, read in place."""

    def __init__(self, path: str):
        try:
            self._fd = os.open(path, os.O_RDONLY)
            self.size = os.fstat(self._fd).st_size
        except OSError as error:
            raise storage.StorageError(f"cannot open {path}: {error}", transient=False) from error
        self.path = path

    def read(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
        except OSError as error:
            raise storage.StorageError(
                f"cannot read {self.path}: {error}", transient=False
            ) from error

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


Blob = MemoryBlob | FileBlob


class BlobFile(io.RawIOBase):
    """A blob as a seekable binary file, for readers that want one (tarfile, zipfile)."""

    def __init__(self, blob: Blob):
        self._blob, self._pos = blob, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._blob.size}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        data = self._blob.read(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_blob(uri: str, retry_deadline_s: float = 0.0) -> Blob:
    """A local file in place, or an S3 object fetched whole (transient failures retried for
    `retry_deadline_s`, see storage.read_retrying). Raises StorageError."""
    if storage.parse_location(uri).is_s3:
        return MemoryBlob(storage.read_retrying(uri, retry_deadline_s))
    return FileBlob(storage.parse_location(uri).key)


def chunks(blob: Blob) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of the blob (CHUNK_BYTES each), in order."""
    chunk_bytes = CHUNK_BYTES
    for offset in range(0, blob.size, chunk_bytes):
        yield offset, blob.read(offset, chunk_bytes)


def gunzip(name: str, blob: Blob, skips: SkipCounter) -> tuple[MemoryBlob, bool]:
    """All gzip members of `blob` decompressed, and whether the stream was complete. A stream
    that ends early ("truncated_shard") or holds bad bytes ("corrupt_shard") keeps what came
    out before the problem."""
    out = bytearray()
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    started = False  # whether the current member has consumed input
    for _, piece in chunks(blob):
        while piece:
            try:
                out += decompressor.decompress(piece)
            except zlib.error as error:
                skips.count("corrupt_shard", f"{name}: {error}")
                return MemoryBlob(out), False
            started = True
            if not decompressor.eof:
                break
            piece = decompressor.unused_data  # the next member starts here
            decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            started = False
    if started and not decompressor.eof:
        skips.count("truncated_shard", f"{name}: gzip stream ends early")
        return MemoryBlob(out), False
    return MemoryBlob(out), True

"""Webdataset tar shards, indexed by their members' headers.

Consecutive members with the same key (the path up to the first dot of the file name) form one
sample `{"__key__": key, ext: bytes, ...}`, e.g. `000001.jpg` + `000001.txt` ->
`{"__key__": "000001", "jpg": b"...", "txt": b"..."}`. Indexing reads the headers only and keeps
where each member's bytes are; `TarSamples.read(j)` reads sample j's members when the loader
gets to it, so a 1 GB tar costs a worker its index, not its bytes (see blobs.py for S3).
"""

import io
import tarfile
from array import array
from collections.abc import Callable, Iterable

from .blobs import Blob, BlobFile
from .skips import SkipCounter

TAR_BLOCK = 512
_END_OF_ARCHIVE = b"\0" * (2 * TAR_BLOCK)


def tar_sample_key(member_name: str) -> tuple[str, str] | None:
    """webdataset's split of a member name: `a/b/000001.seg.json` -> ("a/b/000001", "seg.json").

    None for names whose file name has no extension (or starts with a dot).
    """
    directory, _, file_name = member_name.rpartition("/")
    stem, dot, extension = file_name.partition(".")
    if not dot or not stem or not extension:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


class TarSamples:
    """The kept samples of a tar: key, and (extension, offset, size) of each member."""

    def __init__(self, blob: Blob):
        self.blob = blob
        self.indices = array("q")
        self._samples: list[tuple[str, tuple]] = []

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, j: int) -> dict:
        """Sample j. Raises StorageError if its bytes cannot be read."""
        key, members = self._samples[j]
        record = {"__key__": key}
        for extension, offset, size in members:
            record[extension] = self.blob.read(offset, size)
        return record

    def close(self) -> None:
        self.blob.close()


def index_tar(
    name: str, blob: Blob, skips: SkipCounter, *, keep: Callable[[int], bool]
) -> TarSamples:
    """Index a webdataset tar. Counted: "bad_tar_member" (a member name without extension),
    "duplicate_tar_member" (a second member with a sample's extension; the first wins) and
    "truncated_shard" (the archive breaks off or has no end-of-archive marker: the sample
    being collected then is dropped, as it may be partial)."""
    samples = TarSamples(blob)
    index, key, members = -1, None, []
    end_of_members = 0

    def finish() -> None:
        if key is not None and keep(index):
            samples.indices.append(index)
            samples._samples.append((key, tuple(members)))

    try:
        with tarfile.open(fileobj=BlobFile(blob), mode="r:") as archive:
            for member in archive:
                end_of_members = member.offset_data + -(-member.size // TAR_BLOCK) * TAR_BLOCK
                if not member.isfile():
                    continue
                split = tar_sample_key(member.name)
                if split is None:
                    skips.count("bad_tar_member", f"{name}: {member.name!r} has no extension")
                    continue
                member_key, extension = split
                if member_key != key:
                    finish()
                    index, key, members = index + 1, member_key, []
                if not keep(index):
                    continue  # not this reader's sample: nothing to keep or count
                if any(extension == seen for seen, _, _ in members):
                    skips.count("duplicate_tar_member", f"{name}: {member.name!r}")
                    continue
                members.append((extension, member.offset_data, member.size))
        # tarfile ends quietly at a cut or garbled header; a whole archive ends in two zero
        # blocks, and its last member's data must be all there.
        marker = blob.read(end_of_members, len(_END_OF_ARCHIVE)) if end_of_members else b""
        if end_of_members and marker != _END_OF_ARCHIVE:
            raise tarfile.ReadError(f"no end-of-archive marker after byte {end_of_members}")
        finish()
    except (tarfile.TarError, OSError, EOFError) as error:
        skips.count("truncated_shard", f"{name}: {error}")
    return samples


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

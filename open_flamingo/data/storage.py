"""Reading and writing data where users keep it: local paths, `s3://bucket/prefix` and
`profile:s3://bucket/prefix` (an AWS-config profile per prefix, for users with several Ceph
clusters).

S3 goes through boto3 with per-process clients (`open_flamingo.data.s3`: endpoints, keys and
botocore's retries, set by `OPEN_FLAMINGO_S3_MAX_ATTEMPTS`). Failures raise `StorageError`, whose
`transient` flag says whether retrying can help; `retry_transient` bridges outages longer than
botocore's retries, up to a deadline, and `read_retrying` then tells an outage (code UNREACHABLE)
from one object that keeps failing. `ImageFetcher` reads many objects concurrently; `read_range`
reads part of one.

Clients and thread pools are created lazily, once per process, never at import: DataLoader
workers fork, and a forked child makes its own.
"""

import contextlib
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from weakref import WeakSet

from .s3 import UNREACHABLE, StorageError, reset_clients, s3_client, s3_errors
from .s3 import classify as _classify

__all__ = [
    "ImageFetcher",
    "Location",
    "StorageError",
    "UNREACHABLE",
    "answers",
    "list_files",
    "parse_location",
    "has_files",
    "read_bytes",
    "read_range",
    "read_retrying",
    "reset_clients",
    "retry_transient",
    "s3_client",
    "size",
    "write_bytes",
]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A parsed data path: a local path, or an S3 bucket + key with an optional profile."""

    bucket: str | None  # None for local paths
    key: str  # local path, or object key / key prefix (no leading "/")
    profile: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def join(self, *parts: str) -> "Location":
        if not self.is_s3:
            return Location(None, str(Path(self.key, *parts)))
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return Location(self.bucket, key, self.profile)

    def __str__(self) -> str:
        if not self.is_s3:
            return self.key
        uri = f"s3://{self.bucket}/{self.key}"
        return f"{self.profile}:{uri}" if self.profile else uri


def parse_location(uri: "str | os.PathLike | Location") -> Location:
    """`/data/x`, `s3://bucket/prefix` or `profile:s3://bucket/prefix` -> Location."""
    if isinstance(uri, Location):
        return uri
    uri = os.fspath(uri)
    profile = None
    head, sep, rest = uri.partition(":s3://")
    if sep and "/" not in head:
        profile, uri = head, "s3://" + rest
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"No bucket in {uri!r}; expected s3://bucket/prefix")
        return Location(bucket, key.strip("/"), profile)
    if profile is not None:
        raise ValueError(f"Unsupported path {uri!r}")
    return Location(None, uri)


# --- operations --------------------------------------------------------------------------------


def read_bytes(uri) -> bytes:
    """The whole content of a file or object. Raises StorageError."""
    location = parse_location(uri)
    if not location.is_s3:
        try:
            return Path(location.key).read_bytes()
        except OSError as error:
            raise StorageError(f"cannot read {location}: {error}", transient=False) from error
    try:
        response = s3_client(location.profile).get_object(Bucket=location.bucket, Key=location.key)
        return response["Body"].read()
    except s3_errors() as error:
        raise _classify(error, location) from error


def read_range(uri, start: int, length: int) -> bytes:
    """Bytes `start` to `start + length` of a file or object (fewer at its end); for S3 one
    ranged GET. Raises StorageError."""
    if start < 0 or length < 1:
        raise ValueError(f"need start >= 0 and length >= 1, got {start}, {length}")
    location = parse_location(uri)
    if not location.is_s3:
        try:
            with open(location.key, "rb") as file:
                return os.pread(file.fileno(), length, start)
        except OSError as error:
            raise StorageError(f"cannot read {location}: {error}", transient=False) from error
    byte_range = f"bytes={start}-{start + length - 1}"
    try:
        client = s3_client(location.profile)
        response = client.get_object(Bucket=location.bucket, Key=location.key, Range=byte_range)
        return response["Body"].read()
    except s3_errors() as error:
        raise _classify(error, location) from error


def write_bytes(uri, data: bytes) -> None:
    """Write a file (parents created; replaced atomically) or an object. Raises StorageError."""
    location = parse_location(uri)
    if not location.is_s3:
        path = Path(location.key)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise StorageError(f"cannot write {location}: {error}", transient=False) from error
        return
    try:
        s3_client(location.profile).put_object(Bucket=location.bucket, Key=location.key, Body=data)
    except s3_errors() as error:
        raise _classify(error, location, "write") from error


def _head(location: Location) -> dict:
    return s3_client(location.profile).head_object(Bucket=location.bucket, Key=location.key)


def size(uri) -> int:
    """The size in bytes of a file or object. Raises StorageError."""
    location = parse_location(uri)
    if not location.is_s3:
        try:
            return Path(location.key).stat().st_size
        except OSError as error:
            raise StorageError(f"cannot stat {location}: {error}", transient=False) from error
    try:
        return int(_head(location)["ContentLength"])
    except s3_errors() as error:
        raise _classify(error, location, "look up") from error


def list_files(prefix) -> list[str]:
    """All files / objects under a directory or key prefix, recursively, sorted."""
    location = parse_location(prefix)
    if not location.is_s3:
        root = Path(location.key)
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    prefix_key = location.key + "/" if location.key else ""
    names = []
    try:
        paginator = s3_client(location.profile).get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix_key):
            names.extend(obj["Key"] for obj in page.get("Contents", []))
    except s3_errors() as error:
        raise _classify(error, location, "list") from error
    return sorted(str(Location(location.bucket, name, location.profile)) for name in names)


def has_files(prefix) -> bool:
    """Whether a directory / key prefix holds at least one file or object (one cheap LIST)."""
    location = parse_location(prefix)
    if not location.is_s3:
        root = Path(location.key)
        return root.is_dir() and any(path.is_file() for path in root.rglob("*"))
    try:
        response = s3_client(location.profile).list_objects_v2(
            Bucket=location.bucket, Prefix=location.key + "/" if location.key else "", MaxKeys=1
        )
    except s3_errors() as error:
        raise _classify(error, location, "list") from error
    return bool(response.get("KeyCount", len(response.get("Contents", []))))


# --- outages and concurrency -------------------------------------------------------------------

T = TypeVar("T")


def retry_transient(
    fn: Callable[[], T],
    deadline_s: float,
    *,
    first_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
) -> T:
    """`fn()`, retried on transient StorageErrors with exponential backoff and jitter until
    `deadline_s` seconds have passed; then the last transient error is raised. Other errors
    are raised at once. The last attempt may end after the deadline by its own duration."""
    if deadline_s < 0 or first_delay_s <= 0 or max_delay_s < first_delay_s:
        raise ValueError("need deadline_s >= 0 and 0 < first_delay_s <= max_delay_s")
    start = time.monotonic()
    delay = first_delay_s
    for attempt in itertools.count(1):  # ends: every failed attempt sleeps, up to the deadline
        try:
            return fn()
        except StorageError as error:
            remaining = deadline_s - (time.monotonic() - start)
            if not error.transient or remaining <= 0:
                raise
            logger.warning("attempt %d failed (%s); retrying for %.1f s", attempt, error, remaining)
            time.sleep(min(remaining, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, max_delay_s)
    raise AssertionError("unreachable")


def answers(uri) -> bool:
    """Whether the storage holding `uri` answers at all: for S3 a HEAD of the bucket, where any
    answer but a transient failure counts (a missing bucket or a refusal is an answer too).
    Local paths always answer."""
    location = parse_location(uri)
    if not location.is_s3:
        return True
    try:
        s3_client(location.profile).head_bucket(Bucket=location.bucket)
    except s3_errors() as error:
        return not _classify(error, location, "reach").transient
    return True


def read_retrying(uri, deadline_s: float) -> bytes:
    """`read_bytes(uri)`, retried on transient errors for `deadline_s` (see retry_transient).
    If it still fails transiently and the storage does not answer a probe either (`answers`),
    the StorageError has code UNREACHABLE: an outage, not one object that keeps failing."""
    try:
        return retry_transient(lambda: read_bytes(uri), deadline_s)
    except StorageError as error:
        if error.transient and not answers(uri):
            message = f"{error}; the storage answers no request (retried for {deadline_s:g} s)"
            raise StorageError(message, transient=True, code=UNREACHABLE) from error
        raise


_FETCHERS: "WeakSet[ImageFetcher]" = WeakSet()


class ImageFetcher:
    """Reads many files / objects concurrently, so that S3 latency is hidden in data-loader
    workers. Each read's future holds its content, or its failure as a StorageError value.

    The thread pool is created on first use in the process that fetches; a forked child (a
    DataLoader worker) starts its own. Each read is a `read_retrying(uri, retry_deadline_s)`.
    """

    def __init__(self, threads: int = 16, *, retry_deadline_s: float = 0.0):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.retry_deadline_s = retry_deadline_s
        self._reset()
        _FETCHERS.add(self)

    def _reset(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # pickled into spawned workers without the pool
        return {"threads": self.threads, "retry_deadline_s": self.retry_deadline_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["threads"], retry_deadline_s=state["retry_deadline_s"])

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="image-fetch")
            return self._pool

    def submit(self, uri) -> "Future[bytes | StorageError]":
        """Start reading `uri`; the future's result is its content or its StorageError."""
        return self._get_pool().submit(self._fetch_one, uri)

    def _fetch_one(self, uri) -> "bytes | StorageError":
        try:
            return read_retrying(uri, self.retry_deadline_s)
        except StorageError as error:
            return error
        except ValueError as error:  # a malformed URI is bad data, not a crash
            return StorageError(f"cannot read {uri!r}: {error}", transient=False)

    def close(self) -> None:
        """Stop the pool's threads (a later submit starts a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> "ImageFetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reset_fetchers_in_forked_child() -> None:
    """The parent's pool threads (and a lock held at fork time) do not exist in a child."""
    for fetcher in list(_FETCHERS):
        fetcher._reset()


os.register_at_fork(after_in_child=_reset_fetchers_in_forked_child)

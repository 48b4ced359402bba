"""Reading and writing data where users keep it: local paths, `s3://bucket/prefix` and
`profile:s3://bucket/prefix` (an AWS-config profile per prefix, for users with several Ceph
clusters).

S3 goes through boto3 with per-process clients (`open_flamingo.data.s3`: endpoints, keys and
botocore's retries, set by `OPEN_FLAMINGO_S3_MAX_ATTEMPTS`). Failures raise `StorageError`, whose
`transient` flag says whether retrying can help; `retry_transient` bridges outages longer than
botocore's retries, up to a deadline, and `read_retrying` then tells an outage (code UNREACHABLE)
from one object that keeps failing. `ImageFetcher` reads many objects concurrently.

Clients and thread pools are created lazily, once per process, never at import: DataLoader
workers fork, and a forked child makes its own.
"""

import contextlib
import io
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from weakref import WeakSet

from .s3 import reset_clients, s3_client

__all__ = [
    "ImageFetcher",
    "Location",
    "StorageError",
    "UNREACHABLE",
    "answers",
    "exists",
    "list_files",
    "open_stream",
    "parse_location",
    "read_bytes",
    "read_retrying",
    "reset_clients",
    "retry_transient",
    "s3_client",
    "size",
    "write_bytes",
]
logger = logging.getLogger(__name__)

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
# The code of a StorageError from `read_retrying` when the storage answers no request at all.
UNREACHABLE = "Unreachable"


class StorageError(Exception):
    """A read or write that failed. `transient` errors (throttling, 5xx, timeouts, connection
    resets) may succeed when retried later; others (missing object, access denied) will not.
    `code` is the S3 error code when there is one (e.g. "NoSuchKey")."""

    def __init__(self, message: str, *, transient: bool, code: str | None = None):
        super().__init__(message)
        self.transient = transient
        self.code = code

    def __reduce__(self):  # keyword-only arguments: picklable across worker processes
        return _rebuild_storage_error, (str(self), self.transient, self.code)


def _rebuild_storage_error(message: str, transient: bool, code: str | None) -> StorageError:
    return StorageError(message, transient=transient, code=code)


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


# --- errors ---------------------------------------------------------------------------------


def _classify(error: Exception, location: Location, action: str = "read") -> StorageError:
    """A StorageError saying what failed, whether it is transient, and what to check."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        SSLError,
    )

    where = f"cannot {action} {location}"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        transient = status >= 500 or status == 429 or code in _TRANSIENT_CODES
        if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
            hint = "no such object"
        elif code == "NoSuchBucket":
            hint = f"no such bucket {location.bucket!r}"
        elif status == 403 or code in {"InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            source = f"profile {location.profile!r}" if location.profile else "AWS_ACCESS_KEY_ID"
            hint = f"access denied; check the keys and permissions of {source}"
        else:
            hint = "retryable server error" if transient else "request rejected"
        return StorageError(f"{where}: {code or status} ({hint})", transient=transient, code=code)
    if isinstance(error, SSLError):  # a certificate problem does not pass by itself
        return StorageError(f"{where}: {error}", transient=False)
    network = (ConnectionError, HTTPClientError, IncompleteReadError, OSError)
    if isinstance(error, network):  # unreachable endpoint, reset, timeout, cut-off body
        return StorageError(f"{where}: {type(error).__name__}: {error}", transient=True)
    return StorageError(f"{where}: {type(error).__name__}: {error}", transient=False)


def _s3_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


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
    except _s3_errors() as error:
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
    except _s3_errors() as error:
        raise _classify(error, location, "write") from error


class _S3Body(io.RawIOBase):
    """A GetObject body as a raw binary stream whose read errors are StorageErrors."""

    def __init__(self, body, location: Location):
        self._body, self._location = body, location

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._body.read(len(buffer))
        except _s3_errors() as error:
            raise _classify(error, self._location) from error
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def open_stream(uri, buffer_size: int = 1 << 20) -> IO[bytes]:
    """A readable binary file object (local file, or the object's body read incrementally),
    e.g. for gzip / tarfile streaming. Close it when done. Raises StorageError."""
    location = parse_location(uri)
    if not location.is_s3:
        try:
            return open(location.key, "rb", buffering=buffer_size)
        except OSError as error:
            raise StorageError(f"cannot open {location}: {error}", transient=False) from error
    try:
        response = s3_client(location.profile).get_object(Bucket=location.bucket, Key=location.key)
    except _s3_errors() as error:
        raise _classify(error, location, "open") from error
    return io.BufferedReader(_S3Body(response["Body"], location), buffer_size)


def _head(location: Location) -> dict:
    return s3_client(location.profile).head_object(Bucket=location.bucket, Key=location.key)


def exists(uri) -> bool:
    """Whether a file or an object exists. Directories and key prefixes are not objects; a
    missing bucket reads as a missing object (S3's HEAD answers both with a bare 404)."""
    location = parse_location(uri)
    if not location.is_s3:
        return Path(location.key).is_file()
    try:
        _head(location)
    except _s3_errors() as error:
        classified = _classify(error, location, "look up")
        if classified.code in _MISSING_CODES:
            return False
        raise classified from error
    return True


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
    except _s3_errors() as error:
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
    except _s3_errors() as error:
        raise _classify(error, location, "list") from error
    return sorted(str(Location(location.bucket, name, location.profile)) for name in names)


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
    except _s3_errors() as error:
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
    workers. `fetch` returns results in input order, failures as StorageError values.

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

    def fetch(self, uris: Iterable) -> list["bytes | StorageError"]:
        """The content of each of `uris` (or its StorageError), in input order."""
        uris = list(uris)
        if not uris:
            return []
        return list(self._get_pool().map(self._fetch_one, uris))

    def _fetch_one(self, uri) -> "bytes | StorageError":
        try:
            return read_retrying(uri, self.retry_deadline_s)
        except StorageError as error:
            return error
        except ValueError as error:  # a malformed URI is bad data, not a crash
            return StorageError(f"cannot read {uri!r}: {error}", transient=False)

    def close(self) -> None:
        """Stop the pool's threads (a later fetch starts a new pool)."""
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

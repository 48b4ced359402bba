"""Reading and writing data where users keep it: local paths, `s3://bucket/prefix` and
`profile:s3://bucket/prefix` (an AWS-config profile per prefix, for users with several Ceph
clusters).

S3 goes through boto3 with `endpoint_url` (from the profile, or `AWS_ENDPOINT_URL`) and the
standard credential sources. Clients are created lazily, once per process and profile, never at
import (DataLoader workers fork).
"""

import os
import threading
from dataclasses import dataclass
from pathlib import Path

_CLIENTS: dict[tuple[int, str | None], object] = {}
_CLIENTS_LOCK = threading.Lock()


class StorageError(Exception):
    """A read or write that failed. `transient` errors (throttling, 5xx, timeouts, connection
    resets) may succeed when retried later; others (missing object, access denied) will not."""

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


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


def s3_client(profile: str | None = None):
    """The boto3 S3 client of this process for `profile` (created on first use)."""
    key = (os.getpid(), profile)
    client = _CLIENTS.get(key)
    if client is None:
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(profile_name=profile)
                config = Config(
                    retries={"mode": "standard", "max_attempts": 8},
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=64,
                )
                client = session.client("s3", config=config)
                _CLIENTS[key] = client
    return client


def _classify(error: Exception, location: Location) -> StorageError:
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        transient = status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout"}
        return StorageError(f"{location}: {code or status}", transient=transient)
    return StorageError(f"{location}: {type(error).__name__}: {error}", transient=True)


def read_bytes(uri) -> bytes:
    """The whole content of a file or object. Raises StorageError."""
    location = parse_location(uri)
    if not location.is_s3:
        try:
            return Path(location.key).read_bytes()
        except OSError as error:
            raise StorageError(f"{location}: {error}", transient=False) from error
    try:
        response = s3_client(location.profile).get_object(Bucket=location.bucket, Key=location.key)
        return response["Body"].read()
    except Exception as error:  # botocore raises many types; all are classified
        raise _classify(error, location) from error


def write_bytes(uri, data: bytes) -> None:
    """Write a file (parents created) or an object."""
    location = parse_location(uri)
    if not location.is_s3:
        path = Path(location.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    try:
        s3_client(location.profile).put_object(Bucket=location.bucket, Key=location.key, Body=data)
    except Exception as error:
        raise _classify(error, location) from error


def list_files(prefix) -> list[str]:
    """All files / objects under a directory or key prefix, recursively, sorted."""
    location = parse_location(prefix)
    if not location.is_s3:
        root = Path(location.key)
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    client = s3_client(location.profile)
    prefix_key = location.key + "/" if location.key else ""
    names = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=prefix_key
        ):
            names.extend(obj["Key"] for obj in page.get("Contents", []))
    except Exception as error:
        raise _classify(error, location) from error
    return sorted(str(Location(location.bucket, name, location.profile)) for name in names)

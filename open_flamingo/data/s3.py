"""The boto3 S3 clients of this process (one per profile, created on first use, never at import)
and the StorageError their failures become.

Without a profile, boto3's standard sources apply (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY`, the default profile). A named profile takes its keys and endpoint from
the AWS config / credentials files (`AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`): its
`endpoint_url` (or a nested `s3 =` / `endpoint_url = ...`) wins over `AWS_ENDPOINT_URL`, which is
then only the fallback. (botocore alone would let `AWS_ENDPOINT_URL` override the profile.)

botocore retries transient failures itself, in standard mode, with `OPEN_FLAMINGO_S3_MAX_ATTEMPTS`
(1 to 20, default 5) as botocore's `max_attempts`: the retries after the first attempt. Each
attempt gives up after `OPEN_FLAMINGO_S3_CONNECT_TIMEOUT` seconds without a connection (default
10) or `OPEN_FLAMINGO_S3_READ_TIMEOUT` seconds without a byte of the answer (default 15). So one
request to a storage that accepts connections but never answers fails within (retries + 1) x the
read timeout plus botocore's backoff (under 1, 2, 4, 8, 16 s before the retries): 6 x 15 s +
31 s, about 2 minutes, with the defaults.
"""

import os
import threading

MAX_ATTEMPTS_ENV = "OPEN_FLAMINGO_S3_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_ENV = "OPEN_FLAMINGO_S3_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "OPEN_FLAMINGO_S3_READ_TIMEOUT"
DEFAULT_TIMEOUTS_S = {CONNECT_TIMEOUT_ENV: 10.0, READ_TIMEOUT_ENV: 15.0}
# The variables a client depends on: a cached client is reused only while they are unchanged.
CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    MAX_ATTEMPTS_ENV,
    CONNECT_TIMEOUT_ENV,
    READ_TIMEOUT_ENV,
)

_CLIENTS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def max_attempts() -> int:
    """botocore's attempts per request (the first one included), from MAX_ATTEMPTS_ENV."""
    value = os.environ.get(MAX_ATTEMPTS_ENV, str(DEFAULT_MAX_ATTEMPTS))
    if not value.isdigit() or not 1 <= int(value) <= 20:
        raise ValueError(f"{MAX_ATTEMPTS_ENV} must be an integer from 1 to 20, got {value!r}")
    return int(value)


def timeout_s(name: str) -> float:
    """A timeout in seconds from the variable `name` (CONNECT_TIMEOUT_ENV / READ_TIMEOUT_ENV)."""
    value = os.environ.get(name, str(DEFAULT_TIMEOUTS_S[name]))
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 600:
        raise ValueError(
            f"{name} must be a number of seconds above 0 and at most 600, got {value!r}"
        )
    return seconds


def profile_endpoint(scoped_config: dict) -> str | None:
    """The endpoint of a profile: `endpoint_url`, or the nested `s3 =` / `endpoint_url = ...`."""
    nested = scoped_config.get("s3")
    nested = nested.get("endpoint_url") if isinstance(nested, dict) else None
    return scoped_config.get("endpoint_url") or nested


def _create_client(profile: str | None):
    import boto3
    import botocore.session
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts()},
        connect_timeout=timeout_s(CONNECT_TIMEOUT_ENV),
        read_timeout=timeout_s(READ_TIMEOUT_ENV),
        max_pool_connections=64,
    )
    core = botocore.session.Session(profile=profile)  # ProfileNotFound when it is not there
    endpoint = profile_endpoint(core.get_scoped_config()) if profile else None
    session = boto3.session.Session(botocore_session=core)
    return session.client("s3", endpoint_url=endpoint, config=config)


def s3_client(profile: str | None = None):
    """The boto3 S3 client of this process for `profile`, created on first use and again when
    one of the CLIENT_ENV variables has changed since. Raises botocore's errors."""
    key = (profile, *(os.environ.get(name) for name in CLIENT_ENV))
    client = _CLIENTS.get(key)
    if client is None:
        with _LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                client = _CLIENTS[key] = _create_client(profile)
    return client


def reset_clients() -> None:
    """Close and forget this process's clients (e.g. after the AWS config files changed)."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


def _forget_in_forked_child() -> None:
    """A forked child must not share the parent's connections, nor a lock held at fork time."""
    global _LOCK
    _LOCK = threading.Lock()
    _CLIENTS.clear()


os.register_at_fork(after_in_child=_forget_in_forked_child)


# --- errors ---------------------------------------------------------------------------------

TRANSIENT_CODES = {
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
MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
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


def classify(error: Exception, location, action: str = "read") -> StorageError:
    """A StorageError saying what failed at `location` (a storage.Location), whether it is
    transient, and what to check."""
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
        transient = status >= 500 or status == 429 or code in TRANSIENT_CODES
        if code in MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
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


def s3_errors() -> tuple[type[Exception], ...]:
    """What boto3 raises for a failed request (imported late: boto3 is optional at import)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)

"""The boto3 S3 clients of this process: one per profile, created on first use, never at import.

Without a profile, boto3's standard sources apply (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY`, the default profile). A named profile takes its keys and endpoint from
the AWS config / credentials files (`AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`): its
`endpoint_url` (or a nested `s3 =` / `endpoint_url = ...`) wins over `AWS_ENDPOINT_URL`, which is
then only the fallback. (botocore alone would let `AWS_ENDPOINT_URL` override the profile.)

botocore retries transient failures itself, in standard mode with `OPEN_FLAMINGO_S3_MAX_ATTEMPTS`
attempts in all (1 to 20, default 5).
"""

import os
import threading

MAX_ATTEMPTS_ENV = "OPEN_FLAMINGO_S3_MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 5
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
)

_CLIENTS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def max_attempts() -> int:
    """botocore's attempts per request (the first one included), from MAX_ATTEMPTS_ENV."""
    value = os.environ.get(MAX_ATTEMPTS_ENV, str(DEFAULT_MAX_ATTEMPTS))
    if not value.isdigit() or not 1 <= int(value) <= 20:
        raise ValueError(f"{MAX_ATTEMPTS_ENV} must be an integer from 1 to 20, got {value!r}")
    return int(value)


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
        connect_timeout=10,
        read_timeout=60,
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

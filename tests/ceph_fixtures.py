"""Fixtures for tests against a real S3 endpoint: a Ceph RADOS Gateway on loopback
(tests/support/ceph_rgw.py), started once per test session when a test asks for it."""

import socket
import uuid

import pytest

from conftest import require
from open_flamingo.data import s3, storage
from support.ceph_rgw import CephRGW, missing_binaries


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    """The running CephRGW. For the session, the standard AWS variables point at it and the
    machine's own AWS config files and profile are hidden; storage's clients are reset on the
    way in and out."""
    missing = missing_binaries()
    require(
        not missing,
        f"Ceph is not installed (missing {', '.join(missing)}): "
        "run `bash scripts/ci/install_services.sh`",
    )
    cluster = CephRGW(tmp_path_factory.mktemp("ceph"))
    cluster.start()
    env = pytest.MonkeyPatch()
    try:
        for name, value in cluster.env().items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", str(cluster.root / "no-aws-config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cluster.root / "no-aws-credentials"))
        storage.reset_clients()
        yield cluster
    finally:
        env.undo()
        storage.reset_clients()
        cluster.stop()


@pytest.fixture
def s3_client_admin(rgw):
    """A plain boto3 client of the gateway's user, independent of the code under test."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=rgw.endpoint_url,
        aws_access_key_id=rgw.access_key,
        aws_secret_access_key=rgw.secret_key,
        region_name="us-east-1",
    )
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_client_admin) -> str:
    """A new empty bucket, as "s3://test-<random>"; emptied and removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client_admin.create_bucket(Bucket=name)
    yield f"s3://{name}"
    for page in s3_client_admin.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3_client_admin.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3_client_admin.delete_bucket(Bucket=name)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def point_s3_at_a_closed_port(monkeypatch) -> None:
    """S3 clients with keys but no server (a closed port on loopback), one attempt per request."""
    settings = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        s3.MAX_ATTEMPTS_ENV: "1",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)

"""open_flamingo.data.storage on local paths, and on S3 against a real Ceph RADOS Gateway
(tests/ceph_fixtures.py): round trips, pagination, sizes, profiles, error classes, concurrent
fetching, and outages of the gateway."""

import multiprocessing
import pickle
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from ceph_fixtures import closed_port, point_s3_at_a_closed_port

from conftest import REPO
from open_flamingo.data import s3, storage
from open_flamingo.data.storage import Location, StorageError, parse_location

# --- locations and local paths ---------------------------------------------------------------


def test_parse_location():
    assert parse_location("/data/x.tar") == Location(None, "/data/x.tar")
    assert parse_location("s3://bucket/a/b/") == Location("bucket", "a/b")
    assert parse_location("ceph2:s3://bucket/a") == Location("bucket", "a", "ceph2")
    assert str(parse_location("ceph2:s3://bucket/a").join("b", "c")) == "ceph2:s3://bucket/a/b/c"
    assert parse_location("./with:colon/s3://x") == Location(None, "./with:colon/s3://x")
    with pytest.raises(ValueError, match="No bucket"):
        parse_location("s3:///key")


def test_local_files(tmp_path):
    storage.write_bytes(tmp_path / "a" / "b" / "two.bin", b"22")
    storage.write_bytes(tmp_path / "a" / "one.bin", b"1")
    storage.write_bytes(tmp_path / "a" / "one.bin", b"11")  # replaced
    assert storage.read_bytes(tmp_path / "a" / "one.bin") == b"11"
    assert storage.list_files(tmp_path) == [
        str(tmp_path / "a" / "b" / "two.bin"),
        str(tmp_path / "a" / "one.bin"),
    ]  # sorted, recursive, no partial files left behind
    assert storage.size(tmp_path / "a" / "b" / "two.bin") == 2


@pytest.mark.parametrize(
    "operation",
    [storage.read_bytes, storage.size, lambda p: storage.write_bytes(p, b"")],
)
def test_local_failures_are_not_transient(tmp_path, operation):
    (tmp_path / "file").write_bytes(b"")
    target = tmp_path / "file" / "below-a-file"  # missing, and its parent is not a directory
    with pytest.raises(StorageError) as caught:
        operation(target)
    assert not caught.value.transient
    assert str(target) in str(caught.value)


# --- error classification, clients, retries (no server needed) --------------------------------


def client_error(status: int, code: str) -> ClientError:
    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    "error, transient",
    [
        (client_error(404, "NoSuchKey"), False),
        (client_error(404, "404"), False),
        (client_error(404, "NoSuchBucket"), False),
        (client_error(403, "AccessDenied"), False),
        (client_error(403, "InvalidAccessKeyId"), False),
        (client_error(403, "SignatureDoesNotMatch"), False),
        (client_error(400, "InvalidArgument"), False),
        (client_error(500, "InternalError"), True),
        (client_error(503, "SlowDown"), True),
        (client_error(503, "ServiceUnavailable"), True),
        (client_error(400, "RequestTimeout"), True),
        (client_error(429, "TooManyRequests"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ResponseStreamingError(error="connection reset"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
    ],
)
def test_error_classification(error, transient):
    classified = storage._classify(error, parse_location("s3://bucket/key"))
    assert classified.transient is transient
    assert "s3://bucket/key" in str(classified)


def test_storage_error_survives_pickling():
    error = pickle.loads(pickle.dumps(StorageError("gone", transient=True, code="SlowDown")))
    assert (str(error), error.transient, error.code) == ("gone", True, "SlowDown")


def test_clients_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")
    first = storage.s3_client()
    assert storage.s3_client() is first
    assert first.meta.endpoint_url == "http://127.0.0.1:9001"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9002")
    assert storage.s3_client().meta.endpoint_url == "http://127.0.0.1:9002"
    storage.reset_clients()
    assert not s3._CLIENTS
    monkeypatch.setenv(s3.MAX_ATTEMPTS_ENV, "lots")
    with pytest.raises(ValueError, match=s3.MAX_ATTEMPTS_ENV):
        storage.s3_client()


class Flaky:
    """Fails with the given errors, then returns "ok"; counts its calls."""

    def __init__(self, *errors: StorageError):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retry_transient_retries_only_transient_errors():
    flaky = Flaky(StorageError("a", transient=True), StorageError("b", transient=True))
    assert storage.retry_transient(flaky, deadline_s=10, first_delay_s=0.01) == "ok"
    assert flaky.calls == 3
    flaky = Flaky(StorageError("missing", transient=False))
    with pytest.raises(StorageError, match="missing"):
        storage.retry_transient(flaky, deadline_s=10)
    assert flaky.calls == 1


def test_retry_transient_gives_up_at_the_deadline():
    flaky = Flaky(*(StorageError(f"down {i}", transient=True) for i in range(10_000)))
    start = time.monotonic()
    with pytest.raises(StorageError, match="down") as caught:
        storage.retry_transient(flaky, deadline_s=0.5, first_delay_s=0.01, max_delay_s=0.1)
    elapsed = time.monotonic() - start
    assert caught.value.transient
    assert 0.5 <= elapsed < 0.7
    assert 4 < flaky.calls < 60  # backed off: not a busy loop, not a single try


def test_import_creates_no_client_and_no_threads():
    code = (
        "import sys, threading\n"
        "import open_flamingo.data.storage, open_flamingo.data.s3 as s3\n"
        "assert not s3._CLIENTS, s3._CLIENTS\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- ImageFetcher (local) --------------------------------------------------------------------


def fetch_all(fetcher: storage.ImageFetcher, uris) -> list:
    """Submit every read at once (as the loader's lookahead does), then collect them."""
    futures = [fetcher.submit(uri) for uri in uris]
    return [future.result() for future in futures]


def test_image_fetcher_returns_errors_as_values(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(bytes([i]) * (i + 1))
    uris = [
        tmp_path / "4.jpg",
        tmp_path / "missing.jpg",
        tmp_path / "0.jpg",
        "s3://",
        tmp_path / "3.jpg",
    ]
    with storage.ImageFetcher(threads=3) as fetcher:
        results = fetch_all(fetcher, uris)
    assert results[0] == b"\x04" * 5 and results[2] == b"\x00" and results[4] == b"\x03" * 4
    for bad in (results[1], results[3]):  # a missing file, a malformed URI: values, not raised
        assert isinstance(bad, StorageError) and not bad.transient


def test_image_fetcher_reads_concurrently(monkeypatch):
    barrier = threading.Barrier(4, timeout=10)  # breaks unless 4 reads are in flight at once

    def read_bytes(uri):
        barrier.wait()
        return str(uri).encode()

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    with storage.ImageFetcher(threads=4) as fetcher:
        assert fetch_all(fetcher, ["a", "b", "c", "d"]) == [b"a", b"b", b"c", b"d"]


def test_image_fetcher_pickles_without_its_pool(tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    fetcher = storage.ImageFetcher(threads=2, retry_deadline_s=1.5)
    fetch_all(fetcher, [tmp_path / "x"])
    clone = pickle.loads(pickle.dumps(fetcher))
    assert (clone.threads, clone.retry_deadline_s) == (2, 1.5)
    assert fetch_all(clone, [tmp_path / "x"]) == [b"x"]
    fetcher.close()
    clone.close()


# --- S3 on the real gateway --------------------------------------------------------------------


def test_s3_round_trip_nested_prefixes_and_pagination(s3_bucket):
    keys = [f"shards/{i % 3}/{i:05d}.bin" for i in range(1010)]  # > 1000: several pages
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: storage.write_bytes(f"{s3_bucket}/{key}", key.encode()), keys))
    storage.write_bytes(f"{s3_bucket}/shards-extra/x.bin", b"not under shards/")
    storage.write_bytes(f"{s3_bucket}/deep/a/b/c/d.bin", b"deep")

    listed = storage.list_files(f"{s3_bucket}/shards")
    assert listed == sorted(f"{s3_bucket}/{key}" for key in keys)
    assert storage.list_files(f"{s3_bucket}/shards/1/")[:2] == [
        f"{s3_bucket}/shards/1/00001.bin",
        f"{s3_bucket}/shards/1/00004.bin",
    ]
    assert storage.list_files(f"{s3_bucket}/deep") == [f"{s3_bucket}/deep/a/b/c/d.bin"]
    assert len(storage.list_files(s3_bucket)) == 1012
    assert storage.read_bytes(f"{s3_bucket}/shards/2/00005.bin") == b"shards/2/00005.bin"
    assert storage.read_bytes(f"{s3_bucket}/deep/a/b/c/d.bin") == b"deep"


def test_s3_size(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/dir/blob", b"x" * 1234)
    assert storage.size(f"{s3_bucket}/dir/blob") == 1234
    with pytest.raises(StorageError) as caught:
        storage.size(f"{s3_bucket}/dir/missing")
    assert not caught.value.transient


def test_s3_missing_key_and_bucket_are_not_transient(s3_bucket):
    with pytest.raises(StorageError, match="no such object") as caught:
        storage.read_bytes(f"{s3_bucket}/missing")
    assert (caught.value.transient, caught.value.code) == (False, "NoSuchKey")
    for operation in (storage.read_bytes, storage.list_files):
        with pytest.raises(StorageError, match="no such bucket") as caught:
            operation("s3://no-such-bucket-here/key")
        assert (caught.value.transient, caught.value.code) == (False, "NoSuchBucket")


def test_s3_profiles_have_their_own_endpoint_and_keys(rgw, s3_bucket, tmp_path, monkeypatch):
    (tmp_path / "config").write_text(
        f"[profile good]\nendpoint_url = {rgw.endpoint_url}\n"
        f"[profile nested]\ns3 =\n  endpoint_url = {rgw.endpoint_url}\n"
        f"[profile badkey]\nendpoint_url = {rgw.endpoint_url}\n"
        "[profile keysonly]\n"
    )
    (tmp_path / "credentials").write_text(
        "".join(
            f"[{name}]\naws_access_key_id = {rgw.access_key}\naws_secret_access_key = {secret}\n"
            for name, secret in [
                ("good", rgw.secret_key),
                ("nested", rgw.secret_key),
                ("badkey", "not-the-secret"),
                ("keysonly", rgw.secret_key),
            ]
        )
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    storage.write_bytes(f"{s3_bucket}/k", b"via env")
    bucket = s3_bucket.removeprefix("s3://")

    # The profile's endpoint and keys win over the environment's (which now lead nowhere).
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    for profile in ("good", "nested"):
        assert storage.read_bytes(f"{profile}:s3://{bucket}/k") == b"via env"
    storage.write_bytes(f"good:s3://{bucket}/p/q", b"via profile")
    assert storage.list_files(f"good:s3://{bucket}/p") == [f"good:s3://{bucket}/p/q"]

    with pytest.raises(StorageError, match="profile 'badkey'") as caught:
        storage.read_bytes(f"badkey:s3://{bucket}/k")
    assert (caught.value.transient, caught.value.code) == (False, "SignatureDoesNotMatch")
    with pytest.raises(StorageError, match="could not be found") as caught:
        storage.read_bytes(f"nonexistent:s3://{bucket}/k")
    assert not caught.value.transient

    # Without an endpoint in the profile, AWS_ENDPOINT_URL is the fallback.
    monkeypatch.setenv("AWS_ENDPOINT_URL", rgw.endpoint_url)
    assert storage.read_bytes(f"keysonly:s3://{bucket}/p/q") == b"via profile"


def test_s3_bad_access_key_is_not_transient(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    with pytest.raises(StorageError, match="access denied") as caught:
        storage.read_bytes(f"{s3_bucket}/k")
    assert (caught.value.transient, caught.value.code) == (False, "InvalidAccessKeyId")


def test_s3_image_fetcher_mixes_present_and_missing(s3_bucket):
    uris = [f"{s3_bucket}/img/{i}.jpg" for i in range(40)]
    for uri in uris[::2]:
        storage.write_bytes(uri, uri.encode())
    with storage.ImageFetcher(threads=8) as fetcher:
        results = fetch_all(fetcher, [*uris, "s3://no-such-bucket-here/x.jpg"])
    assert results[:-1:2] == [uri.encode() for uri in uris[::2]]
    for result, code in [*((r, "NoSuchKey") for r in results[1::2]), (results[-1], "NoSuchBucket")]:
        assert isinstance(result, StorageError) and result.code == code and not result.transient


def _fetch_in_child(fetcher, uris, connection):
    connection.send(fetch_all(fetcher, uris))


def test_s3_image_fetcher_works_in_a_forked_child(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/a", b"A")
    fetcher = storage.ImageFetcher(threads=4)
    # The parent's client and pool exist, with idle threads that a forked child lacks.
    assert fetch_all(fetcher, [f"{s3_bucket}/a"] * 8) == [b"A"] * 8
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_fetch_in_child, args=(fetcher, [f"{s3_bucket}/a", f"{s3_bucket}/b"], send)
    )
    child.start()
    try:
        assert receive.poll(20), "the forked child did not answer"
        results = receive.recv()
    finally:
        child.join(10)
        child.kill()
    fetcher.close()
    assert results[0] == b"A"
    assert isinstance(results[1], StorageError) and results[1].code == "NoSuchKey"
    assert child.exitcode == 0


# --- gateway outages ---------------------------------------------------------------------------


@pytest.fixture
def outage(rgw, s3_bucket, monkeypatch):
    """Fast-failing clients (2 botocore attempts); the gateway is running again afterwards
    (before s3_bucket's clean-up, which needs it)."""
    monkeypatch.setenv(s3.MAX_ATTEMPTS_ENV, "2")
    yield rgw
    if not _gateway_answers(rgw):
        rgw.start_gateway()


def _gateway_answers(rgw) -> bool:
    try:
        socket.create_connection(("127.0.0.1", rgw.port), timeout=1).close()
    except OSError:
        return False
    return True


def test_read_survives_a_gateway_restart(outage, s3_bucket):
    storage.write_bytes(f"{s3_bucket}/k", b"still here")
    calls = []

    def read():
        calls.append(time.monotonic())
        return storage.read_bytes(f"{s3_bucket}/k")

    outage.stop_gateway()
    restart_errors = []

    def restart():
        try:
            outage.start_gateway()
        except Exception as error:  # reported by the assertion below
            restart_errors.append(error)

    restarter = threading.Timer(2.0, restart)  # the outage lasts about two seconds
    restarter.start()
    start = time.monotonic()
    try:
        assert storage.retry_transient(read, deadline_s=30) == b"still here"
    finally:
        restarter.join(30)
    assert not restart_errors
    assert len(calls) >= 2 and calls[-1] - start >= 2.0  # it failed, then succeeded after
    assert time.monotonic() - start < 10


def test_outage_longer_than_the_deadline_raises_a_transient_error(outage, s3_bucket):
    storage.write_bytes(f"{s3_bucket}/k", b"unreachable")
    outage.stop_gateway()
    start = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.retry_transient(lambda: storage.read_bytes(f"{s3_bucket}/k"), deadline_s=2.0)
    elapsed = time.monotonic() - start
    assert caught.value.transient
    # The last attempt may outlast the deadline by one call: two botocore attempts, <= 1 s apart.
    assert 2.0 <= elapsed < 2.0 + 2.0
    outage.start_gateway()
    assert storage.read_bytes(f"{s3_bucket}/k") == b"unreachable"


# --- an unreachable storage and an object that keeps failing (no server needed) ---------------


def test_read_retrying_reports_an_unreachable_storage(monkeypatch):
    point_s3_at_a_closed_port(monkeypatch)
    assert not storage.answers("s3://bucket/key")
    start = time.monotonic()
    with pytest.raises(StorageError, match="EndpointConnectionError.*answers no request") as caught:
        storage.read_retrying("s3://bucket/key", deadline_s=0.5)
    assert 0.5 <= time.monotonic() - start < 5
    assert (caught.value.transient, caught.value.code) == (True, storage.UNREACHABLE)
    with storage.ImageFetcher(threads=2) as fetcher:  # no retries: one attempt, then the probe
        (result,) = fetch_all(fetcher, ["s3://bucket/image"])
    assert isinstance(result, StorageError) and result.code == storage.UNREACHABLE


def test_one_object_that_keeps_failing_is_not_an_outage(tmp_path, monkeypatch):
    failure = StorageError("cannot read x: 500 (retryable server error)", transient=True)

    def read_bytes(uri):
        if str(uri).endswith("broken"):
            raise failure
        return b"fine"

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    assert storage.answers(tmp_path / "broken")  # a local disk always answers
    with pytest.raises(StorageError) as caught:
        storage.read_retrying(tmp_path / "broken", deadline_s=0.2)
    assert caught.value is failure  # as it was: the loader counts it and goes on
    assert storage.read_retrying(tmp_path / "other", deadline_s=0.2) == b"fine"

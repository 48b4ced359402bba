"""A storage that accepts connections and never answers (a hung S3 gateway): requests give up
after the connect / read timeouts and attempts of open_flamingo.data.s3, and the trainer stops
with an error saying so, within the bound the docs state."""

import contextlib
import socket
import threading
import time

import pytest
from test_data_loader import corpus, stream_of  # noqa: F401 (a fixture)
from test_train import argv, tiny  # noqa: F401 (a fixture)

from open_flamingo.data import s3, storage
from open_flamingo.train.train_omnicorpus import main

RETRIES, TIMEOUT_S = 2, 1.0  # botocore's max_attempts counts the retries after the first
# (retries + 1) x the read timeout, botocore's backoff before the retries (under 1 s, 2 s), slack
BOUND_S = (RETRIES + 1) * TIMEOUT_S + 1 + 2 + 2


@contextlib.contextmanager
def silent_endpoint():
    """A TCP server on loopback that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", held
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


@pytest.fixture
def hung_s3(monkeypatch):
    with silent_endpoint() as (url, held):
        settings = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent/config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
            s3.MAX_ATTEMPTS_ENV: str(RETRIES),
            "OPEN_FLAMINGO_S3_CONNECT_TIMEOUT": str(TIMEOUT_S),
            "OPEN_FLAMINGO_S3_READ_TIMEOUT": str(TIMEOUT_S),
        }
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        yield held


def test_a_read_from_a_storage_that_never_answers_times_out(hung_s3):
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match="cannot read s3://bucket/key: Read.*timeout"):
        storage.read_bytes("s3://bucket/key")
    elapsed = time.monotonic() - start
    assert (RETRIES + 1) * TIMEOUT_S <= elapsed < BOUND_S
    assert len(hung_s3) == RETRIES + 1  # it did connect, once per attempt


def test_the_trainer_stops_with_an_error_when_the_storage_never_answers(
    tiny,  # noqa: F811
    hung_s3,
    capsys,
):
    """The shards are listed before the model loads (the pre-flight checks), so the run stops
    there, naming the flag, once the listing's attempts have timed out."""
    start = time.monotonic()
    with pytest.raises(SystemExit):
        main(argv(tiny, tiny["root"] / "hung", omnicorpus_shards="s3://bucket/interleaved"))
    message = capsys.readouterr().err
    assert "--omnicorpus_shards s3://bucket/interleaved: cannot list s3://bucket/interleaved" in (
        message
    )
    assert "timeout" in message.lower()
    assert time.monotonic() - start < BOUND_S


def test_the_loader_stops_when_the_storage_never_answers(
    hung_s3,
    corpus,  # noqa: F811
    tokenizer,
    image_processor,
):
    """As for a closed port (test_data_loader.py): past the retry deadline (0.5 s here, 5 min
    in training) and a probe of the bucket that gets no answer either, the loader stops."""
    stream = stream_of(tokenizer, image_processor, ["s3://down/a.jsonl"], str(corpus / "images"))
    start = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"stops: cannot read s3://down/a.jsonl: Read.*answers no"
    ):
        stream.next_batch()
    assert time.monotonic() - start < 0.5 + 2 * BOUND_S  # a read, then the probe
    stream.close()


def test_the_default_timeouts_are_the_documented_ones(monkeypatch):
    for name in ("OPEN_FLAMINGO_S3_CONNECT_TIMEOUT", "OPEN_FLAMINGO_S3_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert s3.timeout_s(s3.CONNECT_TIMEOUT_ENV) == 10
    assert s3.timeout_s(s3.READ_TIMEOUT_ENV) == 15
    monkeypatch.setenv(s3.READ_TIMEOUT_ENV, "never")
    with pytest.raises(ValueError, match="OPEN_FLAMINGO_S3_READ_TIMEOUT must be a number"):
        s3.timeout_s(s3.READ_TIMEOUT_ENV)

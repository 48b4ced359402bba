"""What a loader worker holds for a shard (docs/data.md, "Memory"): a local JSONL or tar shard
costs its index, not its bytes nor a Python object per record; an S3 object is held once; a
parquet shard is held as Arrow row groups, with no Python object per row. Python allocations
are traced while the shard is indexed and read back."""

import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from published_corpora import tar_of

from open_flamingo.data import blobs, storage
from open_flamingo.data.shards import open_shard
from open_flamingo.data.skips import SkipCounter

MIB = 1 << 20


def doc(i: int) -> dict:
    return {
        "images": [f"https://example.org/{i}.jpg", None],
        "texts": [None, f"doc {i} " + "words of a paragraph " * 200],  # about 4 KB
        "metadata": [{"width": 64, "height": 64}, None],
    }


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(blobs, "CHUNK_BYTES", MIB)


def traced(fn):
    """fn() and the peak of Python allocations while it ran."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_local_jsonl_shard_costs_its_index(tmp_path, small_chunks):
    lines = [json.dumps(doc(i)) for i in range(4000)]
    path = tmp_path / "shard.jsonl"
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    assert size > 15 * MIB
    records, peak = traced(lambda: open_shard(str(path), SkipCounter()))
    assert len(records) == 4000 and peak < 6 * MIB  # a few 1 MiB chunks, never the shard
    assert [records.read(j) for j in (0, 1234, 3999)] == [doc(0), doc(1234), doc(3999)]
    records.close()


def test_local_tar_shard_costs_its_index(tmp_path, small_chunks):
    members = []
    for i in range(300):
        members += [(f"{i:09d}.jpg", bytes([i % 256]) * 40_000), (f"{i:09d}.txt", b"a caption")]
    path = tmp_path / "00000.tar"
    path.write_bytes(tar_of(members))
    records, peak = traced(lambda: open_shard(str(path), SkipCounter()))
    assert len(records) == 300 and path.stat().st_size > 11 * MIB and peak < MIB
    sample = records.read(7)
    assert sample == {"__key__": "000000007", "jpg": bytes([7]) * 40_000, "txt": b"a caption"}
    records.close()


def test_parquet_shard_is_held_as_arrow_not_as_python_rows(tmp_path):
    rows = [doc(i) for i in range(3000)]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=500)

    def arrow_bytes() -> int:  # in any of Arrow's memory pools
        return pa.total_allocated_bytes() + pa.system_memory_pool().bytes_allocated()

    arrow_before = arrow_bytes()
    records, peak = traced(lambda: open_shard(str(path), SkipCounter()))
    held = arrow_bytes() - arrow_before
    data = sum(len(json.dumps(row)) for row in rows)
    assert 0.5 * data < held < 1.5 * data  # the data itself, in columns
    assert peak < 0.05 * data  # and no Python object per row
    assert records.read(2999) == rows[2999]
    records.close()


def test_s3_shard_is_held_once(tmp_path, s3_bucket, small_chunks):
    lines = [json.dumps(doc(i)) for i in range(2000)]
    data = ("\n".join(lines) + "\n").encode()
    uri = f"{s3_bucket}/shards/shard.jsonl"
    storage.write_bytes(uri, data)
    records, peak = traced(lambda: open_shard(uri, SkipCounter()))
    assert len(records) == 2000 and peak < 1.5 * len(data) + 4 * MIB
    assert records.read(1999) == doc(1999)
    records.close()

"""open_flamingo.data.shards: every shard format, stable record indices, reading only the records
a reader keeps, bad input."""

import gzip
import io
import json
import random
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from open_flamingo.data.shards import SHARD_SUFFIXES, iter_records, tar_bytes, tar_sample_key
from open_flamingo.data.skips import SkipCounter

GOOD = [{"id": i, "text": f"record {i}"} for i in range(6)]


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def parquet(rows: list[dict], row_group_size: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def read(name: str, data: bytes, keep=None) -> tuple[list[tuple[int, dict]], dict]:
    skips = SkipCounter()
    kept = {} if keep is None else {"keep": keep}
    return list(iter_records(name, data, skips, **kept)), skips.as_dict()


def from_index(start: int):
    """Keep records `start`, `start + 1`, ..."""
    return lambda index: index >= start


# A JSONL shard with one bad line of each kind; indices 0, 4 and 6 are good.
MIXED_LINES = [
    b'{"id": 0}',
    b'{"id": 1, "text": ',  # invalid JSON in the middle
    b'{"id": 2, "text": "caf\xe9"}',  # Latin-1 byte: not UTF-8
    b"[1, 2, 3]",  # JSON, but not an object
    b'{"id": 4}',
    b"",  # an empty line is not JSON either
    b'{"id": 6}',
    b'{"id": 7, "te',  # cut off: the shard ends here without a newline
]
MIXED = b"\n".join(MIXED_LINES)
MIXED_SKIPS = {"invalid_json": 2, "non_utf8": 1, "schema": 1, "truncated_shard": 1}


def test_jsonl_skips_and_counts_each_bad_line_and_keeps_line_indices():
    records, skips = read("shard.jsonl", MIXED)
    assert records == [(0, {"id": 0}), (4, {"id": 4}), (6, {"id": 6})]
    assert skips == MIXED_SKIPS


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),  # RecursionError in json.loads
        (b'{"id": ' + b"9" * 5000 + b"}", "invalid_json"),  # ValueError: over 4,300 digits
        (b'{"texts": ["cut emoji \\ud83d"]}', "non_utf8"),  # a lone surrogate escape
        (b'{"images": ["https://x/\\uDC00.jpg"]}', "non_utf8"),
    ],
)
def test_json_that_json_loads_refuses_or_utf8_cannot_hold_is_counted(line, reason):
    records, skips = read("shard.jsonl", b'{"id": 0}\n' + line + b'\n{"id": 2}\n')
    assert records == [(0, {"id": 0}), (2, {"id": 2})]
    assert skips == {reason: 1}


def test_escaped_surrogate_pairs_and_backslashes_are_kept():
    lines = [b'{"t": "\\ud83d\\ude00"}', b'{"t": "\\\\ud800"}']  # an emoji; "\\" + "ud800"
    records, skips = read("shard.jsonl", b"\n".join(lines))
    assert records == [(0, {"t": "\U0001f600"}), (1, {"t": "\\ud800"})] and skips == {}


def test_jsonl_last_line_without_newline_is_fine_when_complete():
    records, skips = read("a.jsonl", jsonl(GOOD).rstrip(b"\n"))
    assert [r for _, r in records] == GOOD and skips == {}
    records, skips = read("bom.jsonl", b"\xef\xbb\xbf" + jsonl(GOOD[:2]))
    assert [r for _, r in records] == GOOD[:2] and skips == {}


@pytest.mark.parametrize(
    "stride, offset",
    [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (4, 3), (5, 4), (8, 7), (10, 9)],
)
def test_jsonl_keep_reads_and_counts_only_the_kept_lines(stride, offset):
    """What a loader slot keeps of a shard it shares: every stride-th line (stream.py)."""
    full, _ = read("shard.jsonl", MIXED)

    def kept(index: int) -> bool:
        return index % stride == offset

    records, skips = read("shard.jsonl", MIXED, keep=kept)
    assert records == [(i, r) for i, r in full if kept(i)]
    bad_from = {1: "invalid_json", 2: "non_utf8", 3: "schema", 5: "invalid_json", 7: "truncated"}
    assert sum(skips.values()) == sum(1 for line in bad_from if kept(line))


def test_gzip_jsonl_reads_all_members_and_stops_cleanly_when_truncated():
    data = gzip.compress(jsonl(GOOD[:3])) + gzip.compress(jsonl(GOOD[3:]))  # two gzip members
    records, skips = read("docs.jsonl.gz", data)
    assert records == list(enumerate(GOOD)) and skips == {}

    big = [{"id": i, "payload": random.Random(i).randbytes(200).hex()} for i in range(50)]
    whole = gzip.compress(jsonl(big))
    records, skips = read("docs.jsonl.gz", whole[: len(whole) // 2])
    assert 0 < len(records) < 50
    assert records == list(enumerate(big))[: len(records)]  # a clean prefix, no partial record
    assert skips == {"truncated_shard": 1}

    records, skips = read("docs.jsonl.gz", b"this is not gzip data")
    assert records == [] and skips == {"corrupt_shard": 1}


def test_zip_reads_jsonl_members_in_name_order_as_one_index_sequence():
    data = zipped(
        {
            "b.jsonl": jsonl(GOOD[2:4]).rstrip(b"\n"),  # last line without newline
            "a.jsonl": jsonl(GOOD[:2]),
            "notes.txt": b"not a shard member",
            "c.jsonl": b'{"id": 4}\nnot json\n{"id": 6}\n',
        }
    )
    expected = [*enumerate(GOOD[:4]), (4, {"id": 4}), (6, {"id": 6})]
    for name in ("mmc4.jsonl.zip", "docs.zip"):
        records, skips = read(name, data)
        assert records == expected and skips == {"invalid_json": 1}
    records, skips = read("docs.zip", data, keep=from_index(3))
    assert records == expected[3:] and skips == {"invalid_json": 1}


def test_truncated_zip_is_counted_not_raised():
    data = zipped({"a.jsonl": jsonl(GOOD)})
    records, skips = read("docs.jsonl.zip", data[: len(data) - 30])
    assert records == [] and skips == {"truncated_shard": 1}


def test_parquet_rows_are_dicts_and_only_kept_rows_are_read():
    rows = [{"url": f"https://x/{i}.jpg", "caption": f"c{i}", "jpg": bytes([i])} for i in range(7)]
    data = parquet(rows, row_group_size=3)
    records, skips = read("pairs.parquet", data)
    assert records == list(enumerate(rows)) and skips == {}
    records, _ = read("pairs.parquet", data, keep=from_index(4))
    assert records == list(enumerate(rows))[4:]
    records, skips = read("pairs.parquet", data[: len(data) // 2])
    assert records == [] and skips == {"truncated_shard": 1}


def tar_samples():
    members = []
    for i in range(4):
        key = f"{i:06d}"
        members += [(f"{key}.jpg", bytes([i]) * 700), (f"{key}.txt", f"caption {i}".encode())]
    return members


def test_tar_groups_members_by_key():
    members = [
        *tar_samples()[:2],
        ("000000.json", b"{}"),  # same key, still consecutive: same sample
        ("dir/000001.seg.JSON", b"[]"),  # key keeps the folder; extension lower-cased
        ("README", b"no extension"),
        ("000002.txt", b"first"),
        ("000002.txt", b"second"),  # a second member with the same name
    ]
    records, skips = read("pairs.tar", tar_bytes(members))
    assert records == [
        (0, {"__key__": "000000", "jpg": bytes([0]) * 700, "txt": b"caption 0", "json": b"{}"}),
        (1, {"__key__": "dir/000001", "seg.json": b"[]"}),
        (2, {"__key__": "000002", "txt": b"first"}),
    ]
    assert skips == {"bad_tar_member": 1, "duplicate_tar_member": 1}
    assert tar_sample_key("a/b/x.tar.gz") == ("a/b/x", "tar.gz")
    assert tar_sample_key(".hidden") is None


def test_tar_keep_and_truncation():
    data = tar_bytes(tar_samples())
    full, skips = read("pairs.tar", data)
    assert [i for i, _ in full] == [0, 1, 2, 3] and skips == {}
    assert read("pairs.tar", data, keep=from_index(2))[0] == full[2:]
    # Sample i starts at byte 2560 * i: jpg header (512), jpg data (700 -> 1024), txt header
    # (512), txt data (512). The sample being read when the archive breaks off is dropped.
    cuts = {
        "inside sample 2's jpg data": (2 * 2560 + 512 + 300, 2),
        "between samples 1 and 2 (1 may be incomplete)": (2 * 2560, 1),
        "inside sample 3's txt header": (3 * 2560 + 1536 + 100, 3),
        "after sample 3, without end-of-archive blocks": (4 * 2560, 3),
    }
    for where, (cut, complete) in cuts.items():
        records, skips = read("pairs.tar", data[:cut])
        assert records == full[:complete], where
        assert skips == {"truncated_shard": 1}, where


def test_unsupported_suffix_names_the_supported_ones():
    assert SHARD_SUFFIXES == (
        ".jsonl.gz",
        ".jsonl.zip",
        ".jsonl",
        ".json",
        ".txt",
        ".zip",
        ".parquet",
        ".tar",
    )
    with pytest.raises(ValueError, match=r"\.jsonl\.gz.*\.parquet.*\.tar"):
        next(iter_records("data.csv", b"a,b\n", SkipCounter()))
    assert read("UPPER.JSONL", jsonl(GOOD[:1]))[0] == [(0, GOOD[0])]


@pytest.mark.parametrize(
    "name, data",
    [
        ("a.jsonl", jsonl(GOOD)),
        ("a.jsonl.gz", gzip.compress(jsonl(GOOD))),
        ("a.jsonl.zip", zipped({"a.jsonl": jsonl(GOOD), "b.jsonl": jsonl(GOOD)})),
        ("a.parquet", parquet(GOOD, row_group_size=2)),
        ("a.tar", tar_bytes(tar_samples())),
    ],
)
def test_no_cut_or_corruption_of_a_shard_raises(name, data):
    full, _ = read(name, data)
    rng = random.Random(0)
    for cut in range(0, len(data), max(1, len(data) // 97)):
        records, _ = read(name, data[:cut])
        assert all(record in full for record in records)
        garbled = bytearray(data)
        for _ in range(3):
            garbled[rng.randrange(len(data))] = rng.randrange(256)
        records, _ = read(name, bytes(garbled))
        assert [i for i, _ in records] == sorted({i for i, _ in records})

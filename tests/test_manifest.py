"""Shard specs and manifests: scripts/make_manifest.py (open_flamingo/tools/make_manifest.py) and
open_flamingo.data.manifest, on local disk and on a real Ceph RGW."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_data_loader import fingerprint

from conftest import REPO
from open_flamingo.data import storage
from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.loader import get_data
from open_flamingo.data.manifest import build_manifest, count_records, is_shard, resolve_shards
from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.tools import make_manifest

NUM_DOCS, DOCS_PER_SHARD = 10, 4  # shards of 4, 4 and 2 docs
NUM_PAIRS, PAIRS_PER_SHARD = 6, 4  # tars of 4 and 2 pairs
# The bad shard: two good docs, then one bad line of each kind, the last one cut off.
BAD_LINES = [b"{not json", b"[1, 2]", b'{"texts": ["\xff\xfe"]}', b'{"images": [nu']
BAD_SKIPS = {"invalid_json": 1, "schema": 1, "non_utf8": 1, "truncated_shard": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    write_synthetic_corpus(
        str(root),
        num_docs=NUM_DOCS,
        docs_per_shard=DOCS_PER_SHARD,
        num_pairs=NUM_PAIRS,
        pairs_per_shard=PAIRS_PER_SHARD,
        num_eval=0,
        seed=1,
    )
    good = (root / "interleaved" / "shard-00000.jsonl").read_bytes().splitlines()[:2]
    (root / "bad").mkdir()
    (root / "bad" / "bad.jsonl").write_bytes(b"\n".join(good + BAD_LINES))
    (root / "notes.txt").write_text("not a shard")
    return root


def shard_files(root: Path, folder: str) -> list[str]:
    return sorted(str(p) for p in (root / folder).iterdir())


def counts(manifest: dict) -> dict[str, tuple]:
    """Shard name -> (records, bytes, skipped) of a manifest's entries."""
    return {
        entry["uri"].rpartition("/")[2]: (entry["records"], entry["bytes"], entry["skipped"])
        for entry in manifest["shards"]
    }


def expected_counts(root: Path) -> dict[str, tuple]:
    sizes = {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()}
    docs = [4, 4, 2]
    expected = {
        f"shard-0000{i}.jsonl": (n, sizes[f"shard-0000{i}.jsonl"], {}) for i, n in enumerate(docs)
    }
    expected["bad.jsonl"] = (2, sizes["bad.jsonl"], BAD_SKIPS)
    return expected


# ---------------------------------------------------------------- the CLI, local


def test_cli_counts_the_records_of_each_shard_and_reports_bad_lines(corpus, tmp_path):
    out = tmp_path / "manifest.json"
    spec = f"{corpus}/interleaved::{corpus}/bad"
    result = subprocess.run(
        [sys.executable, "scripts/make_manifest.py", spec, "--out", str(out), "--threads", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(out.read_text())
    assert [e["uri"] for e in manifest["shards"]] == shard_files(corpus, "interleaved") + [
        str(corpus / "bad" / "bad.jsonl")
    ]
    assert counts(manifest) == expected_counts(corpus)
    assert manifest["records"] == NUM_DOCS + 2 and manifest["errors"] == 0
    assert manifest["skipped"] == BAD_SKIPS and manifest["spec"] == spec
    assert manifest["bytes"] == sum(b for _, b, _ in expected_counts(corpus).values())
    # the summary: totals, and the shard with bad lines with its reasons
    lines = result.stdout.splitlines()
    assert lines[0] == f"4 shards, {NUM_DOCS + 2} records, {manifest['bytes']} bytes, 0 unreadable"
    bad_line = next(line for line in lines if "bad.jsonl" in line)
    assert "2 records" in bad_line
    assert all(f"{reason}=1" in bad_line for reason in BAD_SKIPS)
    assert not any("shard-0000" in line for line in lines)  # good shards are not listed
    assert lines[-1] == f"wrote {out}"


def test_cli_without_out_prints_the_manifest(corpus, capsys):
    assert make_manifest.main([f"{corpus}/pairs", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert [(e["records"], e["skipped"]) for e in manifest["shards"]] == [(4, {}), (2, {})]
    assert captured.err.startswith("2 shards, 6 records")


def test_thread_count_does_not_change_the_manifest(corpus):
    spec = f"{corpus}/bad::{corpus}/interleaved::{corpus}/pairs"
    one = build_manifest(spec, threads=1)
    assert build_manifest(spec, threads=4) == one
    assert one["records"] == 2 + NUM_DOCS + NUM_PAIRS


def test_relative_spec_gives_absolute_shard_paths(corpus, monkeypatch):
    monkeypatch.chdir(corpus)
    manifest = build_manifest("interleaved", threads=2)
    assert [e["uri"] for e in manifest["shards"]] == shard_files(corpus, "interleaved")


def test_unreadable_shard_is_listed_with_its_error(corpus, tmp_path, capsys):
    out = tmp_path / "m.json"
    spec = f"{corpus}/interleaved/shard-0000{{0,7}}.jsonl"  # shard 7 does not exist
    assert make_manifest.main([spec, "--out", str(out)]) == 1
    manifest = json.loads(out.read_text())
    first, missing = manifest["shards"]
    assert first["records"] == DOCS_PER_SHARD
    assert missing["uri"].endswith("shard-00007.jsonl") and "records" not in missing
    assert "shard-00007.jsonl" in missing["error"]
    assert (manifest["errors"], manifest["records"]) == (1, DOCS_PER_SHARD)
    assert "shard-00007.jsonl: UNREADABLE" in capsys.readouterr().out


def test_cli_refuses_bad_arguments(corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_manifest.main([str(corpus), "--threads", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        make_manifest.main([str(corpus / "nowhere")])
    assert exit_info.value.code == 2
    assert "No shards found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        make_manifest.main([str(corpus), "--retry-deadline", "nan"])
    assert "--retry-deadline must be a number of seconds >= 0" in capsys.readouterr().err


def test_count_records_of_each_container(corpus):
    entry = count_records(str(corpus / "pairs" / "shard-00000.tar"))
    assert (entry["records"], entry["skipped"]) == (4, {})
    entry = count_records(str(corpus / "bad" / "bad.jsonl"))
    assert (entry["records"], entry["skipped"]) == (2, BAD_SKIPS)


# ---------------------------------------------------------------- resolve_shards


def test_resolve_shards_accepts_every_kind_of_spec(corpus, tmp_path):
    docs, pairs = shard_files(corpus, "interleaved"), shard_files(corpus, "pairs")
    assert resolve_shards(str(corpus / "interleaved")) == docs
    assert resolve_shards(corpus / "interleaved") == docs  # a Path too
    assert resolve_shards(str(corpus)) == shard_files(corpus, "bad") + docs + pairs
    # a manifest written by the CLI
    out = tmp_path / "docs.json"
    assert make_manifest.main([str(corpus / "interleaved"), "--out", str(out)]) == 0
    assert resolve_shards(str(out)) == docs
    # specs joined with "::" (empty parts ignored), in the order given
    joined = f"{corpus}/pairs:: {out} ::{corpus}/bad/bad.jsonl::"
    assert resolve_shards(joined) == pairs + docs + [str(corpus / "bad" / "bad.jsonl")]
    # brace patterns, in pattern order; they may also name folders and manifests
    pattern = f"{corpus}/interleaved/shard-{{00002,00000}}.jsonl"
    assert resolve_shards(pattern) == [docs[2], docs[0]]
    assert resolve_shards(f"{corpus}/{{pairs,interleaved}}") == pairs + docs
    assert make_manifest.main([str(corpus / "pairs"), "--out", str(tmp_path / "pairs.json")]) == 0
    assert resolve_shards(f"{tmp_path}/{{pairs,docs}}.json") == pairs + docs
    # names from a pattern are taken as they are, as webdataset does (not checked to exist)
    assert resolve_shards(f"{corpus}/pairs/shard-{{7..8}}.tar") == [
        f"{corpus}/pairs/shard-7.tar",
        f"{corpus}/pairs/shard-8.tar",
    ]


def test_manifest_entries_may_be_relative_to_the_manifest(corpus, tmp_path, monkeypatch):
    manifest = tmp_path / "nested" / "hand-written.json"
    manifest.parent.mkdir()
    rel = os.path.relpath(corpus / "pairs" / "shard-00001.tar", manifest.parent)
    absolute = str(corpus / "interleaved" / "shard-00000.jsonl")
    manifest.write_text(json.dumps({"shards": [{"uri": rel}, {"uri": absolute}]}))
    monkeypatch.chdir(corpus)  # not the manifest's folder
    assert resolve_shards(str(manifest)) == [str(corpus / "pairs" / "shard-00001.tar"), absolute]


def test_a_part_of_a_spec_that_names_no_shard_is_refused(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-shards.json").write_text('{"shards": []}')
    docs = f"{corpus}/interleaved"
    for typo in (f"{corpus}/interleavd", f"{corpus}/notes.md", str(tmp_path / "no-shards.json")):
        with pytest.raises(ValueError, match=f"No shards found for '{typo}' \\(in "):
            resolve_shards(f"{docs}::{typo}")
    with pytest.raises(ValueError, match=f"No shards found for '{tmp_path}/empty' \\(in "):
        resolve_shards(f"{corpus}/{{pairs,interleaved}}::{tmp_path}/{{empty,no-shards.json}}")


def test_json_that_is_not_a_manifest_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="corpus.json is not a shard manifest"):
        resolve_shards(str(corpus / "corpus.json"))  # the synthetic corpus's summary
    (tmp_path / "broken.json").write_text('{"shards": [')
    with pytest.raises(ValueError, match="invalid JSON"):
        resolve_shards(str(tmp_path / "broken.json"))
    # RecursionError in json.loads (a .json holding an array is a shard: OmniCorpus's own form)
    (tmp_path / "deep.json").write_text('{"shards": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(ValueError, match="deep.json is not a shard manifest: invalid JSON"):
        resolve_shards(str(tmp_path / "deep.json"))
    with pytest.raises(storage.StorageError):
        resolve_shards(str(tmp_path / "missing.json"))


def test_shard_suffixes_are_case_insensitive():
    assert is_shard("a/B.JSONL.GZ") and is_shard("x.Parquet") and is_shard("y.TAR")
    assert not is_shard("corpus.json") and not is_shard("notes.txt")


# ---------------------------------------------------------------- get_data, local and RGW


def corpora_for(docs_spec: str, pairs_spec: str, image_prefix: str) -> dict[str, CorpusConfig]:
    """The documents ("omnicorpus") and the pairs ("laion"), in batches of 2, one pass each."""
    shared = dict(batch_size=2, workers=0)
    return {
        "omnicorpus": CorpusConfig(
            dataset_type="omnicorpus",
            shards=docs_spec,
            image_prefix=image_prefix,
            max_tokens=128,
            num_samples=NUM_DOCS,
            **shared,
        ),
        "laion": CorpusConfig(
            dataset_type="laion", shards=pairs_spec, max_tokens=32, num_samples=NUM_PAIRS, **shared
        ),
    }


def stream(corpora, tokenizer, image_processor, dataset_type, root: str) -> list:
    loader = get_data(corpora[dataset_type], image_processor, tokenizer).dataloader
    return [([k.removeprefix(root) for k in b["keys"]], fingerprint(b)) for b in loader]


def test_get_data_reads_a_manifest_as_its_folder(corpus, tokenizer, image_processor):
    docs_manifest, pairs_manifest = corpus / "docs.json", corpus / "pairs.json"
    assert make_manifest.main([str(corpus / "interleaved"), "--out", str(docs_manifest)]) == 0
    assert make_manifest.main([str(corpus / "pairs"), "--out", str(pairs_manifest)]) == 0
    images = str(corpus / "images")
    by_folder = corpora_for(str(corpus / "interleaved"), str(corpus / "pairs"), images)
    by_manifest = corpora_for(str(docs_manifest), str(pairs_manifest), images)
    for dataset_type, n in (("omnicorpus", NUM_DOCS), ("laion", NUM_PAIRS)):
        expected = stream(by_folder, tokenizer, image_processor, dataset_type, "")
        assert len(expected) == n // 2
        assert len({k for keys, _ in expected for k in keys}) == n  # one pass, every record
        assert stream(by_manifest, tokenizer, image_processor, dataset_type, "") == expected


def test_manifest_on_s3(corpus, tokenizer, image_processor, s3_bucket, capsys):
    remote = f"{s3_bucket}/data"
    for path in corpus.rglob("*"):
        if path.is_file() and path.suffix != ".json":  # no local manifests / summary
            storage.write_bytes(f"{remote}/{path.relative_to(corpus)}", path.read_bytes())
    out = f"{remote}/manifests/docs.json"
    spec = f"{remote}/interleaved::{remote}/bad"
    assert make_manifest.main([spec, "--out", out, "--threads", "4"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    manifest = json.loads(storage.read_bytes(out))
    docs = [f"{remote}/interleaved/shard-0000{i}.jsonl" for i in range(3)]
    assert [e["uri"] for e in manifest["shards"]] == docs + [f"{remote}/bad/bad.jsonl"]
    assert counts(manifest) == expected_counts(corpus)
    # resolve_shards: the S3 manifest, a brace pattern, "::", and a hand-written manifest with
    # entries relative to its prefix
    assert resolve_shards(out) == resolve_shards(spec) == docs + [f"{remote}/bad/bad.jsonl"]
    assert resolve_shards(f"{remote}/interleaved/shard-0000{{1..2}}.jsonl") == docs[1:]
    relative = {"shards": [{"uri": "../pairs/shard-00001.tar"}, {"uri": "x/y.parquet"}]}
    storage.write_bytes(f"{remote}/manifests/rel.json", json.dumps(relative).encode())
    assert resolve_shards(f"{remote}/manifests/rel.json::{remote}/pairs") == [
        f"{remote}/pairs/shard-00001.tar",
        f"{remote}/manifests/x/y.parquet",
        f"{remote}/pairs/shard-00000.tar",
        f"{remote}/pairs/shard-00001.tar",
    ]
    escaping = {"shards": [{"uri": "../../../outside.jsonl"}]}
    storage.write_bytes(f"{remote}/manifests/escaping.json", json.dumps(escaping).encode())
    with pytest.raises(ValueError, match="leaves the bucket"):
        resolve_shards(f"{remote}/manifests/escaping.json")
    # get_data on the S3 manifest gives the batches of the local folder
    docs_only = f"{remote}/manifests/only-docs.json"
    assert make_manifest.main([f"{remote}/interleaved", "--out", docs_only]) == 0
    local = corpora_for(str(corpus / "interleaved"), "", str(corpus / "images"))
    from_s3 = corpora_for(docs_only, "", f"{remote}/images")
    expected = stream(local, tokenizer, image_processor, "omnicorpus", str(corpus))
    assert stream(from_s3, tokenizer, image_processor, "omnicorpus", remote) == expected

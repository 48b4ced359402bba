"""Interleaved corpora as published: OmniCorpus / OBELICS (`.json` arrays, JSONL, parquet with
struct metadata, parquet with JSON-string metadata), OmniCorpus "with similarities", and MMC4
with one image folder per docs shard (as mmc4's download script writes them)."""

import json
from pathlib import Path

from published_corpora import (
    Layout,
    best_matching,
    jsonl,
    noise_png,
    omnicorpus_text,
    openflamingo_text,
    sha,
    softmax,
    solid_png,
    write,
    write_parquet,
    zip_bytes,
)

LONG_WORDS = 400  # "long " x 400 = 2,000 bytes: past any max_tokens the tests use


def _url(name: str) -> str:
    return f"https://example.org/img/{name}.jpg"


def omnicorpus_records() -> tuple[list[dict], dict[str, bytes], list[tuple]]:
    """Documents in OmniCorpus's natural arrangement, the stored images (url -> bytes), and per
    record: (kept image positions, the skips it causes when consumed)."""
    u = {name: _url(name) for name in ("a", "b", "c", "d", "e", "f", "g", "missing", "gone")}
    meta = {"width": 64, "height": 64, "format": "png"}
    records, outcomes = [], []
    # Empty strings among the texts (OmniCorpus's rule drops them before the join), unicode.
    records.append(
        {
            "images": [None, None, u["a"], None, u["b"], None],
            "texts": [
                "present day.",
                "",
                None,
                "\n When the city — 布拉格 — woke 🌃",
                None,
                "Ünï end.",
            ],
            "metadata": [None, None, dict(meta, url=u["a"]), None, dict(meta, url=u["b"]), None],
            "general_metadata": {"url": "https://example.org/1", "warc_record": "<urn:uuid:1>"},
        }
    )
    outcomes.append(({2, 4}, {}))
    # A missing image and an image marked invalid (valid_image false: left out, not counted).
    records.append(
        {
            "images": [u["c"], None, u["missing"], None, u["d"], None],
            "texts": [None, "First caption.", None, "Second.", None, "Third."],
            "metadata": [dict(meta, url=u["c"]), None, None, None, dict(meta, url=u["d"]), None],
            "general_metadata": {"url": "https://example.org/2", "warc_record": None},
            "valid_image": [True, True, False],
        }
    )
    outcomes.append(({0}, {"missing_image": 1}))
    # A long document: truncated at max_tokens, its second <image> cut off with the text.
    records.append(
        {
            "images": [u["e"], None, None, u["f"], None],
            "texts": [None, "long " * LONG_WORDS, "more text", None, "tail"],
            "metadata": [dict(meta, url=u["e"]), None, None, dict(meta, url=u["f"]), None],
            "general_metadata": {"url": "https://example.org/3", "warc_record": "<urn:uuid:3>"},
        }
    )
    outcomes.append(({0, 3}, {"text_truncated": 1}))
    # Every image gone: nothing to train on.
    records.append(
        {
            "images": [u["gone"], None],
            "texts": [None, "Nothing to see."],
            "metadata": [None, None],
            "general_metadata": {"url": "https://example.org/4", "warc_record": None},
        }
    )
    outcomes.append((set(), {"missing_image": 1, "no_images": 1}))
    # Null metadata entries at image positions.
    records.append(
        {
            "images": [u["g"], None, u["a"], None],
            "texts": [None, "A tiled roof.", None, "Ein Dach."],
            "metadata": [None, None, None, None],
            "general_metadata": {"url": "https://example.org/5", "warc_record": None},
        }
    )
    outcomes.append(({0, 2}, {}))
    stored = {
        url: noise_png(i)
        for i, url in enumerate(u.values())
        if url not in (u["missing"], u["gone"])
    }
    return records, stored, outcomes


def _expect(layout: Layout, key: str, record: dict, outcome, stored: dict, eos: str) -> None:
    kept, skips = outcome
    if kept:
        images = [stored[record["images"][p]] for p in sorted(kept)]
        layout.expected[key] = (omnicorpus_text(record["texts"], kept, eos), images)
    if skips:
        layout.doc_skips[key] = skips


def build_omnicorpus(root: Path, eos: str) -> dict[str, Layout]:
    """The same documents as `.json` arrays (one cut off), JSONL (last line cut), OmniCorpus-CC
    parquet and OBELICS parquet; their images under one prefix as sha256(url) objects."""
    records, stored, outcomes = omnicorpus_records()
    for url, data in stored.items():
        write(root / "omnicorpus_images" / sha(url), data)
    layouts = {}

    layout = Layout("omnicorpus", "omnicorpus_json", "omnicorpus_images")
    write(
        root / "omnicorpus_json/part-000.json",
        json.dumps(records[:3], ensure_ascii=False, indent=1).encode(),
    )
    cut = json.dumps(records[3:] + [records[0]], ensure_ascii=False).encode()
    write(root / "omnicorpus_json/part-001.json", cut[: len(cut) - 40])  # inside the last doc
    write(root / "omnicorpus_json/dataset_info.json", b'{"name": "not a shard"}')
    for i, record in enumerate(records):
        shard, index = ("part-000.json", i) if i < 3 else ("part-001.json", i - 3)
        _expect(layout, f"omnicorpus_json/{shard}#{index}", record, outcomes[i], stored, eos)
    layout.shard_skips["omnicorpus_json/part-001.json"] = {"truncated_shard": 1}
    layouts["omnicorpus-json"] = layout

    layout = Layout("omnicorpus", "omnicorpus_jsonl", "omnicorpus_images")
    shard = "omnicorpus_jsonl/CC-MAIN-2023-06/shard_0.jsonl"
    write(root / shard, jsonl([*records, records[0]], cut_last=True))
    for i, record in enumerate(records):
        _expect(layout, f"{shard}#{i}", record, outcomes[i], stored, eos)
    layout.shard_skips[shard] = {"truncated_shard": 1}
    layouts["omnicorpus-jsonl"] = layout

    layout = Layout("omnicorpus", "omnicorpus_cc", "omnicorpus_images")
    shard = "omnicorpus_cc/CC-MAIN-2023-06/train-00000-of-00001.parquet"
    write_parquet(root / shard, records)
    for i, record in enumerate(records):
        _expect(layout, f"{shard}#{i}", record, outcomes[i], stored, eos)
    layouts["omnicorpus-parquet"] = layout

    layout = Layout("obelics", "obelics", "omnicorpus_images")
    shard = "obelics/train-00000-of-00001.parquet"
    rows = [
        {
            "images": r["images"],
            "texts": r["texts"],
            "metadata": json.dumps(r["metadata"]),
            "general_metadata": json.dumps(r["general_metadata"]),
        }
        for r in records
    ]
    write_parquet(root / shard, rows)
    for i, record in enumerate(records):
        outcome = outcomes[i] if "valid_image" not in record else ({0, 4}, {"missing_image": 1})
        _expect(layout, f"{shard}#{i}", record, outcome, stored, eos)
    layouts["obelics-parquet"] = layout
    return layouts


def build_with_similarities(root: Path, eos: str) -> Layout:
    """OmniCorpus "with similarities" JSONL under a CC-MAIN folder. The matrices are chosen so
    that the softmax over sentences decides: record 0 is matched differently (and above the
    threshold only) after it, record 1 loses every image to it (5 near-equal sentences)."""
    names = [f"sim-{i}" for i in range(8)]
    stored = {_url(n): noise_png(100 + i) for i, n in enumerate(names)}
    stored[_url("sim-small")] = solid_png((200, 30, 30))  # under MMC4's 10 KB rule
    for url, data in stored.items():
        write(root / "sim_images" / sha(url), data)
    layout = Layout("omnicorpus_sim", "omnicorpus_sim", "sim_images")
    shard = "omnicorpus_sim/CC-MAIN-2023-06/shard_0.jsonl"
    records = [
        (
            [" S zero 🌍", "S one", "S two"],
            ["sim-0", "sim-1"],
            [[0.05, -0.82, 0.6], [-0.83, -0.93, -0.23]],
        ),
        (["a", "b", "c", "d", "e"], ["sim-2", "sim-3"], [[0.9] * 5, [0.9] * 5]),
        (
            ["Zero.", "One.", "Two."],
            ["sim-small", "sim-4", "sim-5"],
            [[0.9, 0.1, 0.1], [0.8, 0.5, 0.1], [0.1, 0.1, 0.7]],
        ),
    ]
    lines = []
    for index, (sentences, images, matrix) in enumerate(records):
        lines.append(
            {
                "sentences": [[s] for s in sentences],
                "matrix": [[row] for row in matrix],
                "images_info": [{"name": [_url(n)], "height": 64, "width": 64} for n in images],
                "doc_loc": index,
            }
        )
        usable = [i for i, n in enumerate(images) if n != "sim-small"]
        rows = [softmax(matrix[i]) for i in usable]
        placed = {s: usable[i] for s, i in best_matching(rows).items()}
        key = f"{shard}#{index}"
        if placed:
            order = [stored[_url(images[placed[s]])] for s in sorted(placed)]
            layout.expected[key] = (openflamingo_text(sentences, set(placed), eos), order)
        else:
            layout.doc_skips[key] = {"no_images": 1}
        if len(usable) < len(images):
            layout.doc_skips[key] = {"small_image": 1}
    assert best_matching(records[0][2]) == {}  # raw scores: nothing over the threshold
    lines.append({"sentences": [["x"]], "matrix": [[[0.5]]], "images_info": [{"name": []}]})
    layout.doc_skips[f"{shard}#3"] = {"schema": 1}
    lines.append(lines[0])
    write(root / shard, jsonl(lines, cut_last=True))
    layout.shard_skips[shard] = {"truncated_shard": 1}
    return layout


def build_mmc4_per_shard(root: Path, eos: str) -> Layout:
    """MMC4 docs shards (a `.jsonl.zip` and a core `.jsonl`) with their images in one folder per
    shard, named as mmc4's download script names them by default; both shards use the same
    image names for different images, so only the right folder gives the right pixels."""
    layout = Layout("mmc4", "mmc4/docs", "mmc4/images")
    shards = {
        "docs_shard_0_v2.jsonl.zip": "docs_shard_0_v2.jsonl_images",
        "docs_no_face_shard_1_v3.jsonl": "docs_no_face_shard_1_v3_images",
    }
    for shard_number, (shard, folder) in enumerate(shards.items()):
        docs = []
        for doc_index in range(2):
            names = [f"{doc_index}-{k}.jpg" for k in range(3)]
            images = {
                n: noise_png(1000 + 100 * shard_number + 10 * doc_index + k)
                for k, n in enumerate(names)
            }
            if doc_index == 1:
                del images[names[0]]  # not downloaded
            for name, data in images.items():
                write(root / "mmc4/images" / folder / name, data)
            sentences = ["Un café à Paris.", "A red bicycle.", "Mountains at dusk.", "The end."]
            matrix = [[0.3, 0.1, 0.05, 0.1], [0.1, 0.05, 0.4, 0.2], [0.2, 0.35, 0.1, 0.28]]
            docs.append(
                {
                    "url": f"https://example.org/mmc4/{shard_number}/{doc_index}",
                    "text_list": sentences,
                    "image_info": [
                        {
                            "image_name": n,
                            "raw_url": _url(n),
                            "matched_text_index": 0,
                            "matched_sim": 0.3,
                        }
                        for n in names
                    ],
                    "similarity_matrix": matrix,
                    "face_detections": None,
                    "could_have_url_duplicate": 0,
                }
            )
            usable = [k for k, n in enumerate(names) if n in images]
            placed = {s: usable[i] for s, i in best_matching([matrix[k] for k in usable]).items()}
            key = f"mmc4/docs/{shard}#{doc_index}"
            order = [images[names[placed[s]]] for s in sorted(placed)]
            layout.expected[key] = (openflamingo_text(sentences, set(placed), eos), order)
            if len(usable) < len(names):
                layout.doc_skips[key] = {"missing_image": 1}
        data = jsonl(docs)
        if shard.endswith(".zip"):
            data = zip_bytes({shard.removesuffix(".zip"): data})
        write(root / "mmc4/docs" / shard, data)
    return layout

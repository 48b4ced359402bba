"""open_flamingo.data.documents / mmc4: records of every corpus schema -> documents."""

import base64
import hashlib
import json
import math

import numpy as np
import pytest

from open_flamingo.data.documents import (
    ImageRef,
    InterleavedDoc,
    PairDoc,
    image_object_name,
    parse_laion_table,
    parse_laion_wds,
    parse_mmc4,
    parse_mmc4_wds,
    parse_omnicorpus,
    parse_omnicorpus_sim,
)
from open_flamingo.data.mmc4 import MMC4_MIN_IMAGE_BYTES, match_images_to_sentences
from open_flamingo.data.shards import iter_records
from open_flamingo.data.skips import SkipCounter, SkipSample

URL_A = "https://example.com/a.jpg"
URL_B = "https://example.com/photos/b.png?size=large"


def sha(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def omnicorpus_record(**overrides) -> dict:
    record = {
        "general_metadata": {"url": "https://example.com/page", "language": "en"},
        "images": [None, URL_A, None, URL_B],
        "texts": ["A page.", None, "About a.", None],
        "metadata": [None, {"width": 10}, None, {"height": 5}],
    }
    return record | overrides


def test_image_object_name_is_the_sha256_hex_of_the_url():
    assert image_object_name(URL_A) == sha(URL_A)
    assert image_object_name("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_omnicorpus_record_becomes_parallel_lists_with_hashed_image_objects(tmp_path):
    doc = parse_omnicorpus(omnicorpus_record(), "shard#0", tmp_path / "images")
    assert doc == InterleavedDoc(
        key="shard#0",
        texts=["A page.", None, "About a.", None],
        images=[
            None,
            ImageRef(uri=str(tmp_path / "images" / sha(URL_A))),
            None,
            ImageRef(uri=str(tmp_path / "images" / sha(URL_B))),
        ],
    )
    assert doc.num_images == 2
    on_s3 = parse_omnicorpus(omnicorpus_record(), "k", "cluster2:s3://bucket/imgs/")
    assert on_s3.images[1] == ImageRef(uri=f"cluster2:s3://bucket/imgs/{sha(URL_A)}")


def test_obelics_metadata_as_json_string_and_named_files():
    # OBELICS: metadata is a JSON string with one entry per position.
    metadata = json.dumps([None, {"image_name": "sub/a.jpg"}, None, {"src": URL_B}])
    doc = parse_omnicorpus(omnicorpus_record(metadata=metadata), "k", "s3://b/p")
    assert [ref.uri for ref in doc.images if ref] == [
        "s3://b/p/sub/a.jpg",
        f"s3://b/p/{sha(URL_B)}",
    ]
    # One entry per image (not per position) and the `filename` key also work.
    per_image = [{"filename": "first.webp"}, {"filename": "second.webp"}]
    doc = parse_omnicorpus(omnicorpus_record(metadata=per_image), "k", "s3://b/p")
    assert [ref.uri for ref in doc.images if ref] == ["s3://b/p/first.webp", "s3://b/p/second.webp"]
    for absent in (None, "null", []):
        doc = parse_omnicorpus(omnicorpus_record(metadata=absent), "k", "s3://b/p")
        assert doc.images[1].uri == f"s3://b/p/{sha(URL_A)}"
    record = omnicorpus_record()
    del record["metadata"], record["general_metadata"]
    assert parse_omnicorpus(record, "k", "s3://b/p").num_images == 2


@pytest.mark.parametrize(
    "overrides, detail",
    [
        ({"images": None}, "missing field 'images'"),
        ({"texts": "A page."}, "field 'texts' is a str"),
        ({"texts": ["A page.", None, "About a."]}, "4 images for 3 texts"),
        ({"texts": ["A page.", "both", "About a.", None]}, "position 1 must hold one"),
        ({"texts": ["A page.", None, None, None]}, "position 2 must hold one"),
        ({"texts": [7, None, "About a.", None]}, "text 0 is a int"),
        ({"images": [None, {"url": URL_A}, None, URL_B]}, "image 1 is {'url'"),
        ({"metadata": "{not json"}, "metadata is not valid JSON"),
        ({"metadata": "[" * 5000 + "]" * 5000}, "metadata is not valid JSON"),  # RecursionError
        ({"metadata": {"width": 1}}, "metadata is a dict"),
        ({"metadata": [None, None, None]}, "3 metadata entries for 4 positions and 2 images"),
        ({"metadata": [None, {"image_name": "../../etc/passwd"}, None, None]}, "unsafe image"),
        ({"metadata": [None, {"image_name": "/abs.jpg"}, None, None]}, "unsafe image"),
    ],
)
def test_omnicorpus_schema_problems_raise_schema_skips(overrides, detail):
    with pytest.raises(SkipSample) as raised:
        parse_omnicorpus(omnicorpus_record(**overrides), "k", "/images")
    assert raised.value.reason == "schema"
    assert detail in raised.value.detail


def test_bad_records_in_a_shard_are_counted_by_reason(tmp_path):
    """What a loader sees: a shard with good, malformed and schema-breaking lines."""
    lines = [
        json.dumps(omnicorpus_record()).encode(),
        b'{"images": [null], "texts": ',  # invalid JSON
        json.dumps({"texts": ["only text"]}).encode(),  # missing key
        json.dumps(omnicorpus_record(texts=["x", "y", "z", None])).encode(),  # two at position 1
        b'{"images": [], "texts": ["\xff"]}',  # not UTF-8
        json.dumps(omnicorpus_record()).encode(),
    ]
    skips = SkipCounter()
    docs = []
    for index, record in iter_records("s.jsonl", b"\n".join(lines) + b"\n", skips):
        try:
            docs.append(parse_omnicorpus(record, f"s.jsonl#{index}", tmp_path))
        except SkipSample as skip:
            skips.count(skip.reason, skip.detail)
    assert [doc.key for doc in docs] == ["s.jsonl#0", "s.jsonl#5"]
    assert skips.as_dict() == {"invalid_json": 1, "schema": 2, "non_utf8": 1}


# ---------------------------------------------------------------------------------------- MMC4


def test_hungarian_matching_beats_greedy_on_a_hand_made_matrix():
    # Greedy (best pair first) takes image 0 -> sentence 0 (0.9), leaving image 1 -> sentence 1
    # (0.1, below threshold): one image, total 1.0. The optimum is 0.8 + 0.85 = 1.65.
    similarity = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert match_images_to_sentences(similarity, threshold=0.24) == {1: 0, 0: 1}
    # 3 x 3: greedy takes 0.95 then 0.5 and 0.1 (1.55); optimal: 0.9 + 0.9 + 0.6 = 2.4.
    similarity = np.array([[0.95, 0.9, 0.0], [0.9, 0.5, 0.6], [0.0, 0.1, 0.9]])
    assert match_images_to_sentences(similarity, threshold=0.0) == {1: 0, 0: 1, 2: 2}


def test_matching_threshold_and_rectangular_matrices():
    similarity = np.array([[0.24, 0.0], [0.0, 0.2399]])
    assert match_images_to_sentences(similarity, threshold=0.24) == {0: 0}
    # 3 images, 1 sentence: only the best image is placed.
    assert match_images_to_sentences(np.array([[0.3], [0.7], [0.5]]), 0.24) == {0: 1}
    # 1 image, 3 sentences.
    assert match_images_to_sentences(np.array([[0.3, 0.7, 0.5]]), 0.24) == {1: 0}


def mmc4_record(**overrides) -> dict:
    record = {
        "url": "https://example.com/article",
        "text_list": ["First sentence.", "Second sentence.", "Third sentence."],
        "image_info": [
            {"image_name": "img0.jpg", "raw_url": "https://x/0.jpg", "matched_text_index": 0},
            {"image_name": "img1.jpg", "raw_url": "https://x/1.jpg", "matched_text_index": 0},
        ],
        "similarity_matrix": [[0.9, 0.8, 0.1], [0.85, 0.1, 0.2]],
    }
    return record | overrides


def test_mmc4_places_each_matched_image_before_its_sentence():
    doc, _ = parse_mmc4(mmc4_record(), "mmc4#3", "s3://mmc4/images", sim_threshold=0.24).match()
    img0, img1 = (
        ImageRef(uri="s3://mmc4/images/img0.jpg"),
        ImageRef(uri="s3://mmc4/images/img1.jpg"),
    )
    assert doc == InterleavedDoc(
        key="mmc4#3",
        texts=[None, "First sentence.", None, "Second sentence.", "Third sentence."],
        images=[img1, None, img0, None, None],
    )
    # A threshold above 0.8 drops image 0's pair and keeps image 1 (0.85).
    doc, _ = parse_mmc4(mmc4_record(), "k", "s3://mmc4/images", sim_threshold=0.84).match()
    assert doc.images == [img1, None, None, None]
    assert doc.texts == [None, "First sentence.", "Second sentence.", "Third sentence."]


@pytest.mark.parametrize(
    "overrides, detail",
    [
        ({"text_list": None}, "missing field 'text_list'"),
        ({"image_info": "img0.jpg"}, "field 'image_info' is a str"),
        ({"text_list": ["a", 2, "c"]}, "text_list holds a non-string"),
        ({"image_info": [{"image_name": "a.jpg"}, "b.jpg"]}, "image_info holds a non-object"),
        ({"similarity_matrix": [[0.9, 0.8, 0.1]]}, "similarity_matrix is (1, 3), expected (2, 3)"),
        ({"similarity_matrix": [[0.9, 0.8], [0.1, 0.2, 0.3]]}, "similarity_matrix"),
        ({"similarity_matrix": None}, "missing field 'similarity_matrix'"),
        ({"similarity_matrix": 0.5}, "field 'similarity_matrix' is a float"),
        ({"similarity_matrix": [[0.9, float("nan"), 0], [0, 0, 0]]}, "NaN"),
        ({"image_info": [{"raw_url": "x"}, {"image_name": "b.jpg"}]}, "image_info[0] has no"),
    ],
)
def test_mmc4_schema_problems_raise_schema_skips(overrides, detail):
    with pytest.raises(SkipSample) as raised:
        parse_mmc4(mmc4_record(**overrides), "k", "/images", sim_threshold=0.24)
    assert raised.value.reason == "schema"
    assert detail in raised.value.detail


def test_mmc4_doc_without_images_parses_to_text_only():
    doc, _ = parse_mmc4(mmc4_record(image_info=[], similarity_matrix=[]), "k", "/i", 0.24).match()
    assert doc.texts == ["First sentence.", "Second sentence.", "Third sentence."]
    assert doc.num_images == 0


def wds_sample(record: dict) -> dict:
    return {"__key__": "000000042", "json": json.dumps(record).encode()}


def test_mmc4_wds_leaves_out_unusable_images_before_matching():
    big0, big1 = b"\x01" * MMC4_MIN_IMAGE_BYTES, b"\x02" * (MMC4_MIN_IMAGE_BYTES + 5)
    infos = [
        {"image_name": "a.jpg", "image_base64": base64.b64encode(big0).decode()},
        {"image_name": "b.jpg", "image_base64": base64.b64encode(big1).decode()},
    ]
    sims = [[0.9, 0.3], [0.8, 0.7]]  # both usable: image 0 -> s0, image 1 -> s1 (1.6 > 1.1)
    record = mmc4_record(text_list=["s0", "s1"], image_info=infos, similarity_matrix=sims)
    doc = parse_mmc4_wds(wds_sample(record), "k", 0.24)
    assert doc.images == [ImageRef(data=big0), None, ImageRef(data=big1), None]

    # Image 0 without base64: image 1 alone now takes sentence 0 (0.8 > 0.7).
    skips = SkipCounter()
    no_base64 = [{"image_name": "a.jpg"}, infos[1]]
    record = mmc4_record(text_list=["s0", "s1"], image_info=no_base64, similarity_matrix=sims)
    doc = parse_mmc4_wds(wds_sample(record), "k", 0.24, skips=skips)
    assert doc.images == [ImageRef(data=big1), None, None]
    assert skips.as_dict() == {"missing_image": 1}

    # Image 0 is 10,999 bytes: "10 KB or less" by MMC4's rule, left out the same way.
    small = [{"image_base64": base64.b64encode(big0[:-1]).decode()}, infos[1]]
    record = mmc4_record(text_list=["s0", "s1"], image_info=small, similarity_matrix=sims)
    doc = parse_mmc4_wds(wds_sample(record), "k", 0.24, skips=skips)
    assert doc.images == [ImageRef(data=big1), None, None]
    assert skips.as_dict() == {"missing_image": 1, "small_image": 1}


@pytest.mark.parametrize(
    "sample, reason",
    [
        ({"__key__": "1", "txt": b"x"}, "schema"),
        ({"__key__": "1", "json": b'{"text_list": ['}, "invalid_json"),
        ({"__key__": "1", "json": b'{"text_list": ["\xe9"]}'}, "non_utf8"),
        ({"__key__": "1", "json": b'{"text_list": ["\\ud800"]}'}, "non_utf8"),  # lone surrogate
        ({"__key__": "1", "json": b"[" * 5000 + b"]" * 5000}, "invalid_json"),  # RecursionError
        ({"__key__": "1", "json": b'{"n": ' + b"1" * 5000 + b"}"}, "invalid_json"),  # ValueError
        ({"__key__": "1", "json": b"[]"}, "schema"),
        (
            wds_sample(mmc4_record(image_info=[{"image_base64": "abc"}], similarity_matrix=[[1]])),
            "schema",
        ),
    ],
)
def test_mmc4_wds_bad_samples(sample, reason):
    with pytest.raises(SkipSample) as raised:
        parse_mmc4_wds(sample, "k", 0.24)
    assert raised.value.reason == reason


# --------------------------------------------------------------------------------------- LAION


def test_laion_webdataset_sample():
    sample = {"__key__": "000001234", "jpg": b"JPEG", "txt": b"a cat  ", "json": b"{}"}
    assert parse_laion_wds(sample, "k") == PairDoc("k", "a cat  ", ImageRef(data=b"JPEG"))
    png = {"__key__": "1", "png": b"PNG", "txt": "caf\u00e9".encode()}
    assert parse_laion_wds(png, "k") == PairDoc("k", "caf\u00e9", ImageRef(data=b"PNG"))


@pytest.mark.parametrize(
    "sample, reason",
    [
        ({"__key__": "1", "txt": b"caption"}, "schema"),  # no image
        ({"__key__": "1", "jpg": b"JPEG", "json": b"{}"}, "schema"),  # no caption
        ({"__key__": "1", "jpg": b"JPEG", "txt": b"caf\xe9"}, "non_utf8"),
    ],
)
def test_laion_webdataset_bad_samples(sample, reason):
    with pytest.raises(SkipSample) as raised:
        parse_laion_wds(sample, "k")
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    "row",
    [
        {"url": URL_A, "caption": "a dog"},
        {"URL": URL_A, "TEXT": "a dog", "similarity": 0.3},  # LAION-400M/5B parquet columns
        {"url": URL_A, "text": "a dog"},
        {"url": URL_A, "URL": None, "caption": None, "TEXT": "a dog"},
    ],
)
def test_laion_table_rows(row):
    doc = parse_laion_table(row, "k", "s3://laion/images")
    assert doc == PairDoc("k", "a dog", ImageRef(uri=f"s3://laion/images/{sha(URL_A)}"))


@pytest.mark.parametrize(
    "row",
    [
        {"caption": "a dog"},
        {"url": URL_A},
        {"url": "", "caption": "x"},
        {"url": URL_A, "caption": 3},
    ],
)
def test_laion_table_rows_without_url_or_caption(row):
    with pytest.raises(SkipSample) as raised:
        parse_laion_table(row, "k", "/images")
    assert raised.value.reason == "schema"


def test_laionen2b_rows_name_their_image_object():
    """OmniCorpus's LAION-En2B rows: `image` is the object's name under the prefix, as is."""
    row = {"image": "part-00000/000000001.jpg", "caption": "a dog", "similarity": 0.3}
    doc = parse_laion_table(row, "k", "s3://laion/images")
    assert doc == PairDoc("k", "a dog", ImageRef(uri="s3://laion/images/part-00000/000000001.jpg"))


@pytest.mark.parametrize(
    "row, detail",
    [
        ({"image": "", "caption": "x"}, "image is empty"),
        ({"image": {"bytes": b"\xff" * 9, "path": None}, "caption": "x"}, "image is a dict"),
        ({"image": "../escape.jpg", "caption": "x"}, "unsafe image file name"),
        ({"image": "a.jpg", "caption": None}, "no caption"),
    ],
)
def test_laionen2b_rows_that_cannot_be_used(row, detail):
    with pytest.raises(SkipSample, match=detail) as raised:
        parse_laion_table(row, "k", "/images")
    assert raised.value.reason == "schema"


def test_valid_image_leaves_images_out_as_omnicorpus_does():
    record = {
        "images": [URL_A, None, URL_B],
        "texts": [None, "text", None],
        "valid_image": [False, None],  # null: not valid either
    }
    doc = parse_omnicorpus(record, "k", "/images")
    assert doc.texts == ["text"] and doc.images == [None]
    record["valid_image"] = [True, True]
    assert parse_omnicorpus(record, "k", "/images").num_images == 2
    for bad in ([True], "yes", [1, 0]):
        with pytest.raises(SkipSample, match="valid_image"):
            parse_omnicorpus({**record, "valid_image": bad}, "k", "/images")


def test_with_similarities_record_softmaxes_over_sentences():
    record = {
        "sentences": [["zero"], ["one"], ["two"]],
        "matrix": [[[0.05, -0.82, 0.6]], [[-0.83, -0.93, -0.23]]],
        "images_info": [{"name": [URL_A]}, {"name": [URL_B]}],
    }
    candidates = parse_omnicorpus_sim(record, "k", "/images")
    assert candidates.sentences == ["zero", "one", "two"]
    assert [ref.uri for ref in candidates.images] == [
        f"/images/{sha(URL_A)}",
        f"/images/{sha(URL_B)}",
    ]
    rows = [[0.05, -0.82, 0.6], [-0.83, -0.93, -0.23]]
    for row, got in zip(rows, candidates.similarity, strict=True):
        exps = [math.exp(x) for x in row]
        assert got.tolist() == pytest.approx([x / sum(exps) for x in exps], abs=1e-12)
    doc, _ = candidates.match()
    # after the softmax: A -> "two" (0.55), B -> "zero" (0.27); the raw scores match nothing
    assert [ref is not None for ref in doc.images] == [True, False, False, True, False]
    assert doc.images[0].uri.endswith(sha(URL_B)) and doc.images[3].uri.endswith(sha(URL_A))


@pytest.mark.parametrize(
    "change, detail",
    [
        ({"sentences": ["not wrapped"]}, r"sentences\[0\] is not a list"),
        ({"images_info": [{"name": []}, {"name": [URL_B]}]}, r"images_info\[0\].name"),
        ({"images_info": [{"name": [""]}, {"name": [URL_B]}]}, "holds no URL"),
        ({"matrix": [[[0.1, 0.2]], [[0.1, 0.2, 0.3]]]}, "matrix"),
        ({"matrix": None}, "missing field 'matrix'"),
    ],
)
def test_with_similarities_schema_problems(change, detail):
    record = {
        "sentences": [["zero"], ["one"], ["two"]],
        "matrix": [[[0.1, 0.2, 0.3]], [[0.3, 0.2, 0.1]]],
        "images_info": [{"name": [URL_A]}, {"name": [URL_B]}],
    }
    with pytest.raises(SkipSample, match=detail) as raised:
        parse_omnicorpus_sim({**record, **change}, "k", "/images")
    assert raised.value.reason == "schema"

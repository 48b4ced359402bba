"""open_flamingo.data.samples: text, token ids, labels and image tensors of training samples,
checked against sequences written out by hand from the rules in the facts file."""

import io
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import open_flamingo.src.factory  # noqa: F401  (registers the ViT-Tiny-16 config)
from open_flamingo.data.documents import ImageRef, InterleavedDoc
from open_flamingo.data.mmc4 import MMC4_MIN_IMAGE_BYTES
from open_flamingo.data.samples import (
    build_interleaved_sample,
    build_pair_sample,
    decode_image,
    interleaved_labels,
    pair_labels,
)
from open_flamingo.data.skips import SkipCounter, SkipSample
from open_flamingo.src.factory import load_flamingo_tokenizer

# The byte tokenizer's ids: 0-255 bytes, then these (open_flamingo/tools/byte_tokenizer.py and
# Flamingo's tokens).
EOS, EOC, IMG, PAD = 256, 257, 258, 259
X = -100


@pytest.fixture(scope="module")
def tokenizer(byte_tokenizer_dir):
    tokenizer = load_flamingo_tokenizer(str(byte_tokenizer_dir))
    assert tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|endofchunk|>", "<image>", "<PAD>"]
    ) == [
        EOS,
        EOC,
        IMG,
        PAD,
    ]
    return tokenizer


def ids(tokenizer, text: str) -> list[int]:
    """Token ids of plain text (one per byte with the byte tokenizer)."""
    return tokenizer(text)["input_ids"]


def solid(color) -> Image.Image:
    return Image.new("RGB", (40, 30), color)


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
RED, GREEN, BLUE, GREY = (
    solid((255, 0, 0)),
    solid((0, 255, 0)),
    solid((0, 0, 255)),
    solid((90,) * 3),
)


def make_doc(*items) -> tuple[InterleavedDoc, list]:
    """Items are texts (str) or images (PIL, or None for an image that failed to load)."""
    doc = InterleavedDoc("doc", [], [])
    images = []
    for item in items:
        is_text = isinstance(item, str)
        doc.texts.append(item if is_text else None)
        doc.images.append(None if is_text else ImageRef(uri=f"img{len(images)}"))
        images.append(None if is_text else item)
    return doc, images


def build(doc_and_images, tokenizer, image_processor, skips=None, **options):
    doc, images = doc_and_images
    settings = dict(
        max_tokens=64, max_num_images=3, single_image_drop_prob=0.0, rng=random.Random(0)
    )
    settings.update(options)
    skips = SkipCounter() if skips is None else skips
    return build_interleaved_sample(
        doc, images, tokenizer, image_processor, skips=skips, **settings
    )


def test_interleaved_sample_text_ids_labels_and_images(tokenizer, image_processor):
    doc = make_doc("Intro.", RED, "A red circle.", GREEN, "Two blue squares.", "The end.")
    skips = SkipCounter()
    sample = build(doc, tokenizer, image_processor, skips)
    # By hand: chunks "Intro.", "<eoc><image>", "A red circle.", "<eoc><image>", ... joined with
    # spaces, first <eoc> removed, " <eoc>" / "<image> " / " <image>" squeezed, then <eoc><eos>.
    expected_text = (
        "Intro.<image>A red circle.<|endofchunk|><image>Two blue squares. The end."
        "<|endofchunk|><|endoftext|>"
    )
    real = sample.attention_mask.bool()
    assert tokenizer.decode(sample.input_ids[real]) == expected_text
    intro, first, second = (
        ids(tokenizer, "Intro."),
        ids(tokenizer, "A red circle."),
        ids(tokenizer, "Two blue squares. The end."),
    )
    tokens = intro + [IMG] + first + [EOC, IMG] + second + [EOC, EOS]
    assert len(tokens) == 6 + 1 + 13 + 2 + 26 + 2
    padding = 64 - len(tokens)
    assert sample.input_ids.tolist() == tokens + [PAD] * padding
    assert sample.attention_mask.tolist() == [1] * len(tokens) + [0] * padding
    # Labels: nothing before the first <image>; no <image>; the text after each <image> and the
    # <eoc> ending it are learned; the <eos> after the last <eoc> is not; nor is padding.
    assert sample.labels.tolist() == (
        [X] * 6 + [X] + first + [EOC, X] + second + [EOC, X] + [X] * padding
    )
    assert sample.images.shape == (3, 1, 3, 64, 64) and sample.images.dtype == torch.float32
    torch.testing.assert_close(sample.images[0, 0], image_processor(RED))
    torch.testing.assert_close(sample.images[1, 0], image_processor(GREEN))
    assert sample.images[2].abs().sum() == 0  # zero padding up to max_num_images
    assert skips.as_dict() == {}


def test_failed_images_are_dropped_and_images_stay_in_text_order(tokenizer, image_processor):
    doc = make_doc(RED, "a", None, "b", BLUE, "c")
    sample = build(doc, tokenizer, image_processor)
    expected = "<image>a b<|endofchunk|><image>c<|endofchunk|><|endoftext|>"
    assert tokenizer.decode(sample.input_ids[sample.attention_mask.bool()]) == expected
    torch.testing.assert_close(sample.images[0, 0], image_processor(RED))
    torch.testing.assert_close(sample.images[1, 0], image_processor(BLUE))


def test_images_over_the_limit_are_counted_and_left_out(tokenizer, image_processor):
    doc = make_doc(RED, "a", GREEN, "b", BLUE, "c", GREY, "d")
    skips = SkipCounter()
    sample = build(doc, tokenizer, image_processor, skips, max_num_images=2)
    # The 3rd and 4th image positions vanish; their texts stay.
    expected = "<image>a<|endofchunk|><image>b c d<|endofchunk|><|endoftext|>"
    assert tokenizer.decode(sample.input_ids[sample.attention_mask.bool()]) == expected
    assert sample.images.shape == (2, 1, 3, 64, 64)
    torch.testing.assert_close(sample.images[1, 0], image_processor(GREEN))
    assert skips.as_dict() == {"images_over_limit": 2}


@pytest.mark.parametrize("items", [("only text",), ("text", None, "more", None)])
def test_doc_without_usable_images_is_rejected(items, tokenizer, image_processor):
    with pytest.raises(SkipSample) as raised:
        build(make_doc(*items), tokenizer, image_processor)
    assert raised.value.reason == "no_images"


def test_over_long_text_is_truncated_and_counted(tokenizer, image_processor):
    doc = make_doc(RED, "0123456789" * 3, GREEN, "tail")
    skips = SkipCounter()
    sample = build(doc, tokenizer, image_processor, skips, max_tokens=20)
    full = (
        [IMG] + ids(tokenizer, "0123456789" * 3) + [EOC, IMG] + ids(tokenizer, "tail") + [EOC, EOS]
    )
    assert sample.input_ids.tolist() == full[:20]
    assert sample.attention_mask.tolist() == [1] * 20
    assert sample.labels.tolist() == [X] + full[1:20]
    assert skips.as_dict() == {"text_truncated": 1}
    # Both images are still given: upstream keeps the tensors of images whose token was cut.
    torch.testing.assert_close(sample.images[1, 0], image_processor(GREEN))


def test_image_cut_off_by_truncation_rejects_the_sample(tokenizer, image_processor):
    doc = make_doc("a long introduction before any image", RED, "caption")
    skips = SkipCounter()
    with pytest.raises(SkipSample) as raised:
        build(doc, tokenizer, image_processor, skips, max_tokens=16)
    assert raised.value.reason == "no_image_after_truncation"
    assert skips.as_dict() == {"text_truncated": 1}


def test_lone_image_as_last_token_leaves_nothing_to_learn(tokenizer, image_processor):
    # "Hello.<image>|<eoc><eos>" cut after <image>: every label is ignored (upstream rejects it).
    with pytest.raises(SkipSample) as raised:
        build(make_doc("Hello.", RED, ""), tokenizer, image_processor, max_tokens=7)
    assert raised.value.reason == "no_trainable_tokens"


def test_single_image_docs_are_dropped_with_the_given_probability(tokenizer, image_processor):
    single, double = make_doc(RED, "a red one"), make_doc(RED, "a", GREEN, "b")
    rng, replay = random.Random(123), random.Random(123)
    dropped = 0
    for _ in range(200):
        expect_drop = replay.random() < 0.5
        try:
            build(single, tokenizer, image_processor, single_image_drop_prob=0.5, rng=rng)
            assert not expect_drop
        except SkipSample as skip:
            assert expect_drop and skip.reason == "single_image_dropped"
            dropped += 1
    assert 70 < dropped < 130
    # Two images: never dropped, and the rng is not drawn from.
    state = rng.getstate()
    build(double, tokenizer, image_processor, single_image_drop_prob=1.0, rng=rng)
    assert rng.getstate() == state
    with pytest.raises(SkipSample):
        build(single, tokenizer, image_processor, single_image_drop_prob=1.0)
    build(single, tokenizer, image_processor, single_image_drop_prob=0.0)


def test_interleaved_label_rules_on_hand_made_ids():
    a, b, c, d = 10, 11, 12, 13
    input_ids = torch.tensor(
        [
            [a, IMG, b, EOC, c, d, IMG, a, EOC, EOS, PAD, PAD],
            # text between <eoc> and the next <image>, a doubled <eoc>, <image> first
            [IMG, IMG, a, EOC, EOC, b, IMG, c, d, EOC, EOS, PAD],
        ]
    )
    expected = [
        [X, X, b, EOC, X, X, X, a, EOC, X, X, X],
        [X, X, a, EOC, X, X, X, c, d, EOC, X, X],
    ]
    labels = interleaved_labels(input_ids, pad_id=PAD, media_id=IMG, eoc_id=EOC)
    assert labels.tolist() == expected
    assert (
        interleaved_labels(input_ids[1], pad_id=PAD, media_id=IMG, eoc_id=EOC).tolist()
        == (expected[1])
    )
    assert pair_labels(input_ids, pad_id=PAD, media_id=IMG).tolist() == [
        [a, X, b, EOC, c, d, X, a, EOC, EOS, X, X],
        [X, X, a, EOC, EOC, b, X, c, d, EOC, EOS, X],
    ]


def labels_by_walking(row: list[int]) -> list[int]:
    """The facts' label rules, applied token by token."""
    labels, seen_image, after_eoc = [], False, False
    for token in row:
        if token == IMG:
            seen_image, after_eoc = True, False
        ignored = token in (PAD, IMG) or not seen_image or after_eoc
        labels.append(X if ignored else token)
        if token == EOC:
            after_eoc = True
    return labels


def test_interleaved_labels_match_the_rules_on_random_sequences():
    rng = random.Random(0)
    rows = [[rng.choice([1, 2, 3, EOS, EOC, IMG, PAD]) for _ in range(40)] for _ in range(300)]
    labels = interleaved_labels(torch.tensor(rows), pad_id=PAD, media_id=IMG, eoc_id=EOC)
    assert labels.tolist() == [labels_by_walking(row) for row in rows]


def test_pair_sample(tokenizer, image_processor):
    sample = build_pair_sample("  a red circle\n", RED, tokenizer, image_processor, max_tokens=24)
    caption = ids(tokenizer, "a red circle")
    tokens = [IMG] + caption + [EOC, EOS]
    assert tokenizer.decode(tokens) == "<image>a red circle<|endofchunk|><|endoftext|>"
    assert sample.input_ids.tolist() == tokens + [PAD] * (24 - len(tokens))
    assert sample.attention_mask.tolist() == [1] * len(tokens) + [0] * (24 - len(tokens))
    # LAION labels: only padding and <image> are ignored (the <eos> is learned).
    assert sample.labels.tolist() == [X] + caption + [EOC, EOS] + [X] * (24 - len(tokens))
    assert sample.images.shape == (1, 1, 3, 64, 64)
    torch.testing.assert_close(sample.images[0, 0], image_processor(RED))

    skips = SkipCounter()
    sample = build_pair_sample("x" * 50, RED, tokenizer, image_processor, max_tokens=8, skips=skips)
    assert sample.input_ids.tolist() == [IMG] + [ids(tokenizer, "x")[0]] * 7
    assert skips.as_dict() == {"text_truncated": 1}


def test_samples_with_the_mpt_tokenizer(assets, image_processor):
    """The real GPT-NeoX-20B tokenizer of OpenFlamingo-3B/9B: ids of special tokens and text."""
    tokenizer = load_flamingo_tokenizer(str(assets / "tokenizers" / "gpt-neox-20b"))
    eos, eoc, img, pad = 0, 50277, 50278, 50279
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (eos, pad)
    doc = make_doc(RED, "A cat sat.", GREEN, "It slept.")
    sample = build(doc, tokenizer, image_processor)
    first, second = tokenizer("A cat sat.").input_ids, tokenizer("It slept.").input_ids
    tokens = [img] + first + [eoc, img] + second + [eoc, eos]
    assert sample.input_ids.tolist() == tokens + [pad] * (64 - len(tokens))
    assert sample.labels.tolist() == [X] + first + [eoc, X] + second + [eoc, X] + [X] * (
        64 - len(tokens)
    )


# ------------------------------------------------------------------------------ decode_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no real pixels: only its header can be read."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"x") + chunk(b"IEND", b"")
    )


def test_decode_image_reads_common_formats_as_rgb():
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        image = decode_image(encoded(solid((200, 30, 30)), fmt))
        assert image.mode == "RGB" and image.size == (40, 30)
    rgba = decode_image(encoded(Image.new("RGBA", (8, 8), (0, 0, 255, 100)), "PNG"))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_image"),
        (b"<html>404 not found</html>", "corrupt_image"),
        (encoded(NOISE, "JPEG")[:900], "corrupt_image"),  # truncated
        (png_header_only(20_000, 20_000), "decompression_bomb"),  # Pillow's own limit
        (png_header_only(9_000, 9_000), "decompression_bomb"),  # ours (8192^2), below Pillow's
        (png_header_only(64, 64), "corrupt_image"),  # the same file, small: decoding fails
        # 150 bytes, but resized to 224 px on its short side: 224 x 6,720,000 pixels
        (encoded(Image.new("L", (1, 30_000)), "PNG"), "extreme_aspect_ratio"),
    ],
)
def test_decode_image_rejects_bad_files(data, reason):
    with pytest.raises(SkipSample) as raised:
        decode_image(data)
    assert raised.value.reason == reason


def test_decode_image_size_rules():
    jpeg = encoded(GREY, "JPEG")
    assert len(jpeg) < MMC4_MIN_IMAGE_BYTES
    # MMC4's "10 KB or less" (len // 1000 <= 10): 10,999 bytes are refused, 11,000 are not.
    padded = jpeg + b"\0" * (MMC4_MIN_IMAGE_BYTES - 1 - len(jpeg))
    with pytest.raises(SkipSample) as raised:
        decode_image(padded, min_bytes=MMC4_MIN_IMAGE_BYTES)
    assert raised.value.reason == "small_image"
    assert decode_image(padded + b"\0", min_bytes=MMC4_MIN_IMAGE_BYTES).size == (40, 30)
    with pytest.raises(SkipSample) as raised:
        decode_image(jpeg, max_pixels=40 * 30 - 1)
    assert raised.value.reason == "decompression_bomb"
    assert decode_image(jpeg, max_pixels=40 * 30).size == (40, 30)
    assert decode_image(encoded(Image.new("L", (400, 2)), "PNG")).size == (400, 2)  # 200:1
    with pytest.raises(SkipSample) as raised:
        decode_image(encoded(Image.new("L", (2, 401)), "PNG"))
    assert raised.value.reason == "extreme_aspect_ratio"
    with pytest.raises(SkipSample) as raised:
        decode_image(jpeg, max_aspect_ratio=1.3)  # 40 x 30
    assert raised.value.reason == "extreme_aspect_ratio"

"""Corpus records -> documents: interleaved image-text docs and image-caption pairs.

Schemas:
- OmniCorpus / OBELICS: parallel lists `images` (URL or null) and `texts` (string or null), one
  non-null per position; optional `metadata` (a list, or a JSON string of one),
  `general_metadata`, and `valid_image` (one bool per image; false: left out). Image objects are
  named by the SHA-256 of their URL under an image prefix.
- OmniCorpus "with similarities" (`sentences` / `matrix` / `images_info`): see mmc4.py.
- MMC4 (`jsonl.zip` shards, images as files) and OpenFlamingo's MMC4 webdataset form (json docs
  with base64 images): see `open_flamingo.data.mmc4`.
- Text-only corpora (web text for a mixture's text source): JSONL / Parquet rows with a string
  field `text`.
- LAION: img2dataset webdataset samples (jpg + txt + json) or table rows: a URL (image object
  sha256(url)) or, in OmniCorpus's LAION-En2B rows, `image` (the object's name), + a caption.

A record that does not fit its schema raises `SkipSample("schema", detail)`.
"""

import json
import os

from .doc_types import (
    ImageRef,
    InterleavedDoc,
    PairDoc,
    TextDoc,
    image_object_name,
    image_uri,
    require_field,
)
from .mmc4 import (
    MMC4_MIN_IMAGE_BYTES,
    MMC4_SIM_THRESHOLD,
    parse_mmc4,
    parse_mmc4_wds,
    parse_omnicorpus_sim,
)
from .skips import SkipSample
from .storage import Location

# Metadata keys that name an image's stored file (then used instead of the URL's hash).
IMAGE_FILE_KEYS = ("image_name", "filename")
LAION_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LAION_URL_KEYS = ("url", "URL")
LAION_CAPTION_KEYS = ("caption", "TEXT", "text")


def parse_omnicorpus(
    record: dict, key: str, image_prefix: "str | os.PathLike | Location"
) -> InterleavedDoc:
    """An OmniCorpus or OBELICS record -> InterleavedDoc with images under `image_prefix`.

    An image's object is `image_prefix/<sha256(url)>`, unless its metadata entry names a file
    (`image_name` or `filename`), which is then taken under `image_prefix` instead. Images whose
    `valid_image` entry is false (or null) are left out, as OmniCorpus leaves them out.
    """
    images = require_field(record, "images", list)
    texts = require_field(record, "texts", list)
    if len(images) != len(texts):
        raise SkipSample("schema", f"{len(images)} images for {len(texts)} texts")
    image_positions = [position for position, url in enumerate(images) if url is not None]
    metadata = _image_metadata(record.get("metadata"), len(images), image_positions)
    valid = _valid_images(record.get("valid_image"), image_positions)

    doc = InterleavedDoc(key=key, texts=[], images=[])
    for position, (url, text) in enumerate(zip(images, texts, strict=True)):
        if (url is None) == (text is None):
            raise SkipSample("schema", f"position {position} must hold one of image / text")
        if text is not None:
            if not isinstance(text, str):
                raise SkipSample("schema", f"text {position} is a {type(text).__name__}")
            doc.texts.append(text)
            doc.images.append(None)
            continue
        if not isinstance(url, str) or not url:
            raise SkipSample("schema", f"image {position} is {url!r}, not a URL")
        if position not in valid:
            continue
        name = _named_file(metadata.get(position)) or image_object_name(url)
        doc.texts.append(None)
        doc.images.append(ImageRef(uri=image_uri(image_prefix, name)))
    return doc


def _valid_images(valid_image, image_positions: list[int]) -> set[int]:
    """The image positions to use: all, or those whose `valid_image` entry is true."""
    if valid_image is None:
        return set(image_positions)
    if not isinstance(valid_image, list) or len(valid_image) != len(image_positions):
        found = len(valid_image) if isinstance(valid_image, list) else type(valid_image).__name__
        raise SkipSample("schema", f"valid_image is {found}, expected one bool per image")
    if not all(flag is None or isinstance(flag, bool) for flag in valid_image):
        raise SkipSample("schema", "valid_image holds a value that is not a bool")
    return {position for position, flag in zip(image_positions, valid_image, strict=True) if flag}


def _image_metadata(metadata, num_positions: int, image_positions: list[int]) -> dict[int, dict]:
    """Per-image metadata by position. `metadata` is None, a list (one entry per position, or
    one per image) or a JSON string of such a list."""
    if metadata is None:
        return {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except (ValueError, RecursionError) as error:  # see shards.decode_json
            raise SkipSample("schema", f"metadata is not valid JSON: {error}") from error
        if metadata is None:
            return {}
    if not isinstance(metadata, list):
        raise SkipSample("schema", f"metadata is a {type(metadata).__name__}, not a list")
    if not metadata:
        return {}
    if len(metadata) == num_positions:
        entries = {position: metadata[position] for position in image_positions}
    elif len(metadata) == len(image_positions):
        entries = dict(zip(image_positions, metadata, strict=True))
    else:
        raise SkipSample(
            "schema",
            f"{len(metadata)} metadata entries for {num_positions} positions "
            f"and {len(image_positions)} images",
        )
    return {position: entry for position, entry in entries.items() if isinstance(entry, dict)}


def _named_file(entry: dict | None) -> str | None:
    for field in IMAGE_FILE_KEYS:
        name = (entry or {}).get(field)
        if isinstance(name, str) and name:
            return name
    return None


def parse_laion_wds(record: dict, key: str) -> PairDoc:
    """An img2dataset webdataset sample (`jpg`/`png`/... image, `txt` caption) -> PairDoc."""
    image = next((record[ext] for ext in LAION_IMAGE_EXTENSIONS if ext in record), None)
    if image is None:
        raise SkipSample("schema", f"no image member ({'/'.join(LAION_IMAGE_EXTENSIONS)})")
    caption = record.get("txt")
    if caption is None:
        raise SkipSample("schema", "no txt member (caption)")
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SkipSample("non_utf8", f"caption: {error}") from error
    return PairDoc(key=key, caption=caption, image=ImageRef(data=image))


def parse_laion_table(
    record: dict, key: str, image_prefix: "str | os.PathLike | Location"
) -> PairDoc:
    """A JSONL / Parquet row with an image and a caption (`caption`/`TEXT`/`text`) -> PairDoc.
    The image is `image_prefix/<image>` when the row names its object (`image`, as OmniCorpus's
    LAION-En2B rows do), else `image_prefix/<sha256(url)>` for its URL (`url`/`URL`)."""
    caption = _first_present(record, LAION_CAPTION_KEYS)
    if not isinstance(caption, str):
        raise SkipSample("schema", f"no caption in {'/'.join(LAION_CAPTION_KEYS)}")
    name = record.get("image")
    if name is None:
        url = _first_present(record, LAION_URL_KEYS)
        if not isinstance(url, str) or not url:
            raise SkipSample("schema", f"no image name or URL in image/{'/'.join(LAION_URL_KEYS)}")
        name = image_object_name(url)
    elif not isinstance(name, str) or not name:
        found = "empty" if name == "" else f"a {type(name).__name__}"
        raise SkipSample("schema", f"image is {found}, not an object name")
    return PairDoc(key=key, caption=caption, image=ImageRef(uri=image_uri(image_prefix, name)))


def parse_text(record: dict, key: str) -> TextDoc:
    """A JSONL / Parquet row with a string `text` -> TextDoc; an empty text is "empty_text"."""
    text = require_field(record, "text", str)
    if not text.strip():
        raise SkipSample("empty_text", key)
    return TextDoc(key=key, text=text)


def _first_present(record: dict, fields: tuple[str, ...]):
    return next((record[field] for field in fields if record.get(field) is not None), None)


__all__ = [
    "MMC4_MIN_IMAGE_BYTES",
    "MMC4_SIM_THRESHOLD",
    "ImageRef",
    "InterleavedDoc",
    "PairDoc",
    "TextDoc",
    "image_object_name",
    "image_uri",
    "parse_laion_table",
    "parse_laion_wds",
    "parse_mmc4",
    "parse_mmc4_wds",
    "parse_omnicorpus",
    "parse_omnicorpus_sim",
    "parse_text",
]

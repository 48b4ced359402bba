"""The document types that every corpus format parses into, and helpers shared by the parsers."""

import hashlib
import os
from dataclasses import dataclass

from .skips import SkipSample
from .storage import Location, parse_location


@dataclass
class ImageRef:
    """Where an image's bytes are: an object to fetch (`uri`) or inline `data`."""

    uri: str | None = None
    data: bytes | None = None


@dataclass
class InterleavedDoc:
    """A document as parallel lists: position i holds a text or an image, exactly one of them."""

    key: str
    texts: list[str | None]
    images: list[ImageRef | None]

    @property
    def num_images(self) -> int:
        return sum(image is not None for image in self.images)


@dataclass
class PairDoc:
    """An image with its caption."""

    key: str
    caption: str
    image: ImageRef


@dataclass
class TextDoc:
    """A text without images (a web-text corpus's document)."""

    key: str
    text: str


def image_object_name(url: str) -> str:
    """The OmniCorpus object name of an image: the SHA-256 hex digest of its URL (no extension)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def image_uri(image_prefix: "str | os.PathLike | Location", name: str) -> str:
    """`name` under `image_prefix`; names that would leave the prefix raise SkipSample."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise SkipSample("schema", f"unsafe image file name {name!r}")
    return str(parse_location(image_prefix).join(name))


def require_field(record: dict, field: str, kind: type | tuple[type, ...]):
    """`record[field]`, checked to be of `kind`; SkipSample("schema") if missing or mistyped."""
    if field not in record or record[field] is None:
        raise SkipSample("schema", f"missing field {field!r}")
    value = record[field]
    if not isinstance(value, kind):
        raise SkipSample("schema", f"field {field!r} is a {type(value).__name__}")
    return value

"""MMC4-style documents: images matched one-to-one to sentences, placed right before their
sentence. MMC4 itself, and OmniCorpus's "with similarities" form, whose sample building is
MMC4's after a softmax of the similarities over the sentence axis.

A record holds `text_list` (sentences), `image_info` (one dict per image: `image_name`,
`raw_url`, `matched_text_index`, `matched_sim`, ...; in OpenFlamingo's webdataset form also
`image_base64`) and `similarity_matrix` (images x sentences). Images are assigned to sentences
by the Hungarian algorithm (maximum total similarity) and assignments with similarity below the
threshold are dropped. As upstream, images that cannot be used (missing, 10 KB or less) are
left out before the matching: the webdataset form knows them at parse time, the `jsonl.zip` form
once the loader has fetched them (`Mmc4Candidates.match`). The upstream `matched_text_index` is
not used.

OmniCorpus "with similarities" records hold `sentences` (`[[text], ...]`), `matrix` (images x
sentences CLIP scores, each row wrapped the same way: `[[row], ...]`) and `images_info` (each
`name` a one-element list holding the image URL; the object is sha256 of that URL).
"""

import base64
import binascii
import os
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .doc_types import ImageRef, InterleavedDoc, image_object_name, image_uri, require_field
from .shards import decode_json
from .skips import SkipCounter, SkipSample
from .storage import Location

MMC4_SIM_THRESHOLD = 0.24
# MMC4 skips images of "10 KB or less", measured as len(data) // 1000 <= 10, i.e. fewer than
# 11,000 bytes.
MMC4_MIN_IMAGE_BYTES = 11_000


def match_images_to_sentences(similarity: np.ndarray, threshold: float) -> dict[int, int]:
    """One-to-one image -> sentence assignment maximising the summed similarity.

    Args:
        similarity: (num_images, num_sentences) float array.
        threshold: assignments with similarity < threshold are dropped.

    Returns:
        {sentence index: image index} for the kept assignments.
    """
    image_indices, sentence_indices = linear_sum_assignment(-similarity)
    return {
        int(sentence): int(image)
        for image, sentence in zip(image_indices, sentence_indices, strict=True)
        if similarity[image, sentence] >= threshold
    }


@dataclass
class Mmc4Candidates:
    """An MMC4 `jsonl.zip` document before matching. Its images are fetched and decoded first,
    so that the ones that cannot be used (missing, 10 KB or less) take no part in the matching,
    as upstream drops them before assigning sentences."""

    key: str
    sentences: list[str]
    images: list[ImageRef]
    similarity: np.ndarray  # (num_images, num_sentences)
    threshold: float

    def match(self, decoded: list | None = None) -> tuple[InterleavedDoc, list]:
        """Match the usable images (`decoded[i] is not None`; all when `decoded` is None) to
        sentences. Returns the interleaved document and `decoded` aligned with its positions
        (None at text positions)."""
        decoded = list(self.images) if decoded is None else decoded
        if len(decoded) != len(self.images):
            raise ValueError(f"{len(decoded)} decoded images for {len(self.images)} in {self.key}")
        kept = [i for i, item in enumerate(decoded) if item is not None]
        rows = self.similarity[np.asarray(kept, dtype=np.intp)]
        doc = _interleave(
            self.key, self.sentences, [self.images[i] for i in kept], rows, self.threshold
        )
        by_ref = {id(self.images[i]): decoded[i] for i in kept}
        return doc, [None if ref is None else by_ref[id(ref)] for ref in doc.images]


def parse_mmc4(
    record: dict,
    key: str,
    image_prefix: "str | os.PathLike | Location",
    sim_threshold: float = MMC4_SIM_THRESHOLD,
) -> Mmc4Candidates:
    """An MMC4 `jsonl.zip` record -> Mmc4Candidates; images are `image_prefix/<image_name>`.
    The loader fetches and decodes them (with the MMC4_MIN_IMAGE_BYTES rule), then matches."""
    sentences, infos, similarity = _mmc4_fields(record)
    refs = []
    for index, info in enumerate(infos):
        name = info.get("image_name")
        if not isinstance(name, str) or not name:
            raise SkipSample("schema", f"image_info[{index}] has no image_name")
        refs.append(ImageRef(uri=image_uri(image_prefix, name)))
    return Mmc4Candidates(key, sentences, refs, similarity, sim_threshold)


def parse_mmc4_wds(
    record: dict,
    key: str,
    sim_threshold: float = MMC4_SIM_THRESHOLD,
    *,
    min_image_bytes: int = MMC4_MIN_IMAGE_BYTES,
    skips: SkipCounter | None = None,
) -> InterleavedDoc:
    """A sample of OpenFlamingo's MMC4 webdataset (`{"__key__", "json": bytes}`) ->
    InterleavedDoc with inline images.

    As upstream, images without `image_base64` or smaller than `min_image_bytes` are left out
    before the matching; they are counted in `skips` ("missing_image", "small_image").
    """
    if "json" not in record:
        raise SkipSample("schema", "no json member")
    try:
        doc = decode_json(record["json"])
    except SkipSample as skip:
        raise SkipSample(skip.reason, f"json member: {skip.detail}") from skip
    if not isinstance(doc, dict):
        raise SkipSample("schema", f"json member is a {type(doc).__name__}, not an object")
    sentences, infos, similarity = _mmc4_fields(doc)
    refs, usable = [], []
    for index, info in enumerate(infos):
        encoded = info.get("image_base64")
        if not isinstance(encoded, str):
            _count(skips, "missing_image", f"{key} image_info[{index}] has no image_base64")
            continue
        try:
            data = base64.b64decode(encoded)
        except (binascii.Error, ValueError) as error:
            raise SkipSample("schema", f"image_info[{index}].image_base64: {error}") from error
        if len(data) < min_image_bytes:
            _count(skips, "small_image", f"{key} image {index}: {len(data)} bytes")
            continue
        refs.append(ImageRef(data=data))
        usable.append(index)
    kept_rows = similarity[np.asarray(usable, dtype=np.intp)]
    return _interleave(key, sentences, refs, kept_rows, sim_threshold)


def _count(skips: SkipCounter | None, reason: str, detail: str) -> None:
    if skips is not None:
        skips.count(reason, detail)


def _mmc4_fields(record: dict) -> tuple[list[str], list[dict], np.ndarray]:
    """(sentences, image infos, (num_images, num_sentences) similarity), schema-checked."""
    sentences = require_field(record, "text_list", list)
    infos = require_field(record, "image_info", list)
    if not all(isinstance(sentence, str) for sentence in sentences):
        raise SkipSample("schema", "text_list holds a non-string")
    if not all(isinstance(info, dict) for info in infos):
        raise SkipSample("schema", "image_info holds a non-object")
    if not infos:
        return sentences, infos, np.zeros((0, len(sentences)))
    rows = require_field(record, "similarity_matrix", list)
    return sentences, infos, _similarity("similarity_matrix", rows, (len(infos), len(sentences)))


def _similarity(field: str, rows: list, expected: tuple[int, int]) -> np.ndarray:
    """`rows` as a finite float array of shape `expected`; SkipSample("schema") otherwise."""
    try:
        similarity = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SkipSample("schema", f"{field}: {error}") from error
    if similarity.shape != expected:
        raise SkipSample("schema", f"{field} is {similarity.shape}, expected {expected}")
    if not np.isfinite(similarity).all():
        raise SkipSample("schema", f"{field} holds NaN or infinity")
    return similarity


def _unwrapped(value, where: str, kind: type):
    """The first element of a one-element list (OmniCorpus wraps sentences, rows and names)."""
    if not isinstance(value, list) or not value or not isinstance(value[0], kind):
        raise SkipSample("schema", f"{where} is not a list holding a {kind.__name__}")
    return value[0]


def softmax_over_sentences(similarity: np.ndarray) -> np.ndarray:
    """(images, sentences) scores -> each image's softmax over the sentences (rows sum to 1)."""
    if similarity.size == 0:
        return similarity
    exponentials = np.exp(similarity - similarity.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def parse_omnicorpus_sim(
    record: dict,
    key: str,
    image_prefix: "str | os.PathLike | Location",
    sim_threshold: float = MMC4_SIM_THRESHOLD,
) -> Mmc4Candidates:
    """An OmniCorpus "with similarities" record -> Mmc4Candidates whose images are
    `image_prefix/<sha256(url)>` and whose similarities are the matrix after a softmax over
    the sentence axis (the threshold then applies to those probabilities, as in OmniCorpus)."""
    items = require_field(record, "sentences", list)
    sentences = [_unwrapped(item, f"sentences[{i}]", str) for i, item in enumerate(items)]
    infos = require_field(record, "images_info", list)
    refs = []
    for index, info in enumerate(infos):
        if not isinstance(info, dict):
            raise SkipSample("schema", f"images_info[{index}] is not an object")
        url = _unwrapped(info.get("name"), f"images_info[{index}].name", str)
        if not url:
            raise SkipSample("schema", f"images_info[{index}].name holds no URL")
        refs.append(ImageRef(uri=image_uri(image_prefix, image_object_name(url))))
    similarity = np.zeros((0, len(sentences)))
    if infos:
        matrix = require_field(record, "matrix", list)
        rows = [_unwrapped(row, f"matrix[{i}]", list) for i, row in enumerate(matrix)]
        similarity = _similarity("matrix", rows, (len(infos), len(sentences)))
    return Mmc4Candidates(key, sentences, refs, softmax_over_sentences(similarity), sim_threshold)


def _interleave(
    key: str,
    sentences: list[str],
    refs: list[ImageRef],
    similarity: np.ndarray,
    threshold: float,
) -> InterleavedDoc:
    """Sentences in order, each matched image right before its sentence."""
    image_for_sentence = match_images_to_sentences(similarity, threshold)
    doc = InterleavedDoc(key=key, texts=[], images=[])
    for index, sentence in enumerate(sentences):
        if index in image_for_sentence:
            doc.texts.append(None)
            doc.images.append(refs[image_for_sentence[index]])
        doc.texts.append(sentence)
        doc.images.append(None)
    return doc

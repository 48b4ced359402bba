"""Training samples, built as OpenFlamingo builds them (see docs: "Training samples").

Interleaved doc -> text `<image>t1<|endofchunk|><image>t2 ...<|endofchunk|>{eos}` plus up to
`max_num_images` image tensors; image-caption pair -> `<image>{caption}<|endofchunk|>{eos}` plus
one image; text-only document -> `{text}{eos}` and no images. Token ids are right padded / truncated to `max_tokens`; labels mask what the model is
not trained to predict.

Rejected documents raise `SkipSample(reason)`, for the caller to count; events that do not
reject a sample ("text_truncated", "images_over_limit") are counted here.
"""

import io
import random
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image

from .doc_types import InterleavedDoc
from .skips import SkipCounter, SkipSample

# How a document's pieces become one text (see `interleaved_text`).
TextRule = Literal["openflamingo", "omnicorpus"]
MEDIA_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
IGNORE_INDEX = -100
# Images above this many pixels are refused before their pixels are decoded (8192 x 8192).
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
# Longer / shorter side. An image processor resizes the shorter side to its input size before it
# crops, so a thin image is a bomb of its own: a 1 x 30,000 PNG of a few hundred bytes becomes
# 224 x 6,720,000 pixels (6 GB, half a minute). Beyond this ratio the crop would show under 0.5%
# of the image anyway.
DEFAULT_MAX_ASPECT_RATIO = 200


@dataclass
class Sample:
    """One training sample.

    input_ids: (L,) long, right padded. attention_mask: (L,) long, 1 on real tokens.
    labels: (L,) long, input_ids with IGNORE_INDEX where no loss is taken.
    images: (N, 1, C, H, W) float; interleaved: N = max_num_images, zero-padded; pairs: N = 1;
        None for a text-only sample.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor | None


def decode_image(
    data: bytes,
    *,
    min_bytes: int = 0,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Encoded image bytes -> RGB PIL image.

    Args:
        data: the encoded file (JPEG, PNG, WebP, ...).
        min_bytes: smaller files are refused ("small_image"); MMC4's rule "10 KB or less" is
            `min_bytes=MMC4_MIN_IMAGE_BYTES` (11,000).
        max_pixels: larger images are refused ("decompression_bomb") from their header, before
            any pixel is decoded.
        max_aspect_ratio: images whose longer side exceeds this many times the shorter one are
            refused ("extreme_aspect_ratio") from their header too.

    Raises:
        SkipSample: "empty_image", "small_image", "decompression_bomb", "extreme_aspect_ratio" or
            "corrupt_image".
    """
    if not data:
        raise SkipSample("empty_image")
    if len(data) < min_bytes:
        raise SkipSample("small_image", f"{len(data)} bytes < {min_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # parses the header only
        except Image.DecompressionBombError as error:
            raise SkipSample("decompression_bomb", str(error)) from error
        except Exception as error:  # Pillow raises many types for bad files; all are counted
            raise SkipSample("corrupt_image", f"{type(error).__name__}: {error}") from error
        width, height = image.size
        if width * height > max_pixels:
            raise SkipSample("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
        if max(width, height) > max_aspect_ratio * min(width, height):
            raise SkipSample("extreme_aspect_ratio", f"{width}x{height}: over {max_aspect_ratio}:1")
        try:
            return image.convert("RGB")
        except Exception as error:  # truncated data, bad chunks, decoder errors of any plugin
            raise SkipSample("corrupt_image", f"{type(error).__name__}: {error}") from error


def _special_ids(tokenizer) -> tuple[int, int, int]:
    """(pad, <image>, <|endofchunk|>) ids of a tokenizer from `load_flamingo_tokenizer`."""
    media_id, eoc_id = tokenizer.convert_tokens_to_ids([MEDIA_TOKEN, END_OF_CHUNK_TOKEN])
    return tokenizer.pad_token_id, media_id, eoc_id


def tokenize_padded(
    tokenizer, text: str, max_tokens: int, skips: SkipCounter | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`text` -> (input_ids (L,), attention_mask (L,)) with L = max_tokens: truncated at the end
    (counted as "text_truncated"), then right padded with the pad token."""
    input_ids = tokenizer(text, verbose=False)["input_ids"]
    if len(input_ids) > max_tokens:
        if skips is not None:
            skips.count("text_truncated", f"{len(input_ids)} > {max_tokens} tokens")
        # The tokenizer truncates as it would with truncation=True (keeping its own specials).
        input_ids = tokenizer(text, max_length=max_tokens, truncation=True)["input_ids"]
    num_real = len(input_ids)
    padded = torch.full((max_tokens,), tokenizer.pad_token_id, dtype=torch.long)
    padded[:num_real] = torch.tensor(input_ids, dtype=torch.long)
    attention_mask = torch.zeros(max_tokens, dtype=torch.long)
    attention_mask[:num_real] = 1
    return padded, attention_mask


def interleaved_labels(
    input_ids: torch.Tensor, *, pad_id: int, media_id: int, eoc_id: int
) -> torch.Tensor:
    """Labels of interleaved sequences: input_ids (..., L) with IGNORE_INDEX on padding, on every
    token before the first <image>, on every token after an <|endofchunk|> up to the next <image>,
    and on every <image>."""
    is_media = input_ids == media_id
    is_eoc = input_ids == eoc_id
    before_first_media = is_media.long().cumsum(-1) == 0
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    # Position of the latest <image> or <|endofchunk|> strictly before each token (-1: none).
    marker_positions = torch.where(is_media | is_eoc, positions, -1)
    latest_marker = marker_positions.cummax(-1).values
    previous_marker = torch.cat(
        [torch.full_like(latest_marker[..., :1], -1), latest_marker[..., :-1]], dim=-1
    )
    after_eoc = (previous_marker >= 0) & is_eoc.gather(-1, previous_marker.clamp(min=0))
    ignored = (input_ids == pad_id) | before_first_media | after_eoc | is_media
    return input_ids.masked_fill(ignored, IGNORE_INDEX)


def pair_labels(input_ids: torch.Tensor, *, pad_id: int, media_id: int) -> torch.Tensor:
    """Labels of image-caption sequences (..., L): IGNORE_INDEX on padding and <image>."""
    ignored = (input_ids == pad_id) | (input_ids == media_id)
    return input_ids.masked_fill(ignored, IGNORE_INDEX)


def interleaved_text(chunks: list[str], eos_token: str, *, drop_empty: bool = False) -> str:
    """Join doc chunks (texts, and END_OF_CHUNK_TOKEN + MEDIA_TOKEN for each kept image) with
    single spaces into OpenFlamingo's training text: the first END_OF_CHUNK_TOKEN removed, the
    three whitespace clean-ups, END_OF_CHUNK_TOKEN + eos appended. `drop_empty` (OmniCorpus's
    rule) leaves empty chunks out of the join, so they add no space."""
    if drop_empty:
        chunks = [chunk for chunk in chunks if chunk]
    text = " ".join(chunks).replace(END_OF_CHUNK_TOKEN, "", 1)
    text = (
        text.replace(f" {END_OF_CHUNK_TOKEN}", END_OF_CHUNK_TOKEN)
        .replace(f"{MEDIA_TOKEN} ", MEDIA_TOKEN)
        .replace(f" {MEDIA_TOKEN}", MEDIA_TOKEN)
    )
    return f"{text}{END_OF_CHUNK_TOKEN}{eos_token}"


def _chunks(doc: InterleavedDoc, kept: list[bool], text_rule: TextRule) -> list[str]:
    """The pieces of the training text. "openflamingo" (MMC4, as OpenFlamingo builds it): a
    kept image's marker is prefixed to the sentence after it. "omnicorpus" (OmniCorpus and
    OBELICS documents, as OmniCorpus builds them): every text and every kept image's marker is
    a piece of its own."""
    marker = END_OF_CHUNK_TOKEN + MEDIA_TOKEN
    chunks, pending = [], ""
    for text, is_kept in zip(doc.texts, kept, strict=True):
        if text is not None and text_rule == "openflamingo":
            chunks.append(pending + text)
            pending = ""
        elif text is not None:
            chunks.append(text)
        elif is_kept and text_rule == "openflamingo":
            pending += marker
        elif is_kept:
            chunks.append(marker)
    return [*chunks, pending] if pending else chunks


def _image_stack(images: list[Image.Image], image_processor, num_slots: int) -> torch.Tensor:
    """PIL images -> (num_slots, 1, C, H, W) float, zero-padded after the real images."""
    tensors = torch.stack([image_processor(image) for image in images]).float()
    padding = tensors.new_zeros((num_slots - len(images), *tensors.shape[1:]))
    return torch.cat([tensors, padding]).unsqueeze(1)


def build_interleaved_sample(
    doc: InterleavedDoc,
    images: list[Image.Image | None],
    tokenizer,
    image_processor,
    *,
    max_tokens: int,
    max_num_images: int,
    single_image_drop_prob: float,
    rng: random.Random,
    skips: SkipCounter,
    text_rule: TextRule = "openflamingo",
) -> Sample:
    """An interleaved document -> Sample with images (max_num_images, 1, C, H, W).

    Args:
        doc: the document.
        images: aligned with `doc.images`: the decoded image, or None at text positions and
            where the image could not be used (those positions are dropped).
        max_tokens: sequence length L.
        max_num_images: the first this many usable images are kept (the rest are counted as
            "images_over_limit").
        single_image_drop_prob: a sample with a single <image> left is dropped with this
            probability (MMC4: 0.5), drawn from `rng` only in that case.
        text_rule: how texts and images are joined (`_chunks`): "openflamingo" for MMC4,
            "omnicorpus" for OmniCorpus / OBELICS documents (empty texts add no space).

    As upstream, the image tensors hold every kept image, also those whose <image> token was cut
    off by truncation (the model never attends to them).

    Raises:
        SkipSample: "no_images", "no_image_after_truncation", "single_image_dropped",
            "no_trainable_tokens" (every label ignored, e.g. a lone <image> as last token).
    """
    if len(images) != len(doc.images):
        raise ValueError(f"{len(images)} images for the {len(doc.images)} positions of {doc.key}")
    kept_images, kept, over_limit = [], [], 0
    for ref, image in zip(doc.images, images, strict=True):
        is_kept = ref is not None and image is not None and len(kept_images) < max_num_images
        over_limit += ref is not None and image is not None and not is_kept
        kept.append(is_kept)
        if is_kept:
            kept_images.append(image)
    if over_limit:
        skips.count("images_over_limit", f"{doc.key}: {over_limit} more", n=over_limit)
    if not kept_images:
        raise SkipSample("no_images", doc.key)

    chunks = _chunks(doc, kept, text_rule)
    text = interleaved_text(chunks, tokenizer.eos_token, drop_empty=text_rule == "omnicorpus")
    input_ids, attention_mask = tokenize_padded(tokenizer, text, max_tokens, skips)
    pad_id, media_id, eoc_id = _special_ids(tokenizer)
    num_media_tokens = int((input_ids == media_id).sum())
    if num_media_tokens == 0:
        raise SkipSample("no_image_after_truncation", doc.key)
    if num_media_tokens == 1 and rng.random() < single_image_drop_prob:
        raise SkipSample("single_image_dropped", doc.key)
    labels = interleaved_labels(input_ids, pad_id=pad_id, media_id=media_id, eoc_id=eoc_id)
    if bool((labels == IGNORE_INDEX).all()):
        raise SkipSample("no_trainable_tokens", doc.key)
    return Sample(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        images=_image_stack(kept_images, image_processor, max_num_images),
    )


def build_pair_sample(
    caption: str,
    image: Image.Image,
    tokenizer,
    image_processor,
    *,
    max_tokens: int,
    skips: SkipCounter | None = None,
) -> Sample:
    """An image-caption pair -> Sample with images (1, 1, C, H, W).

    Raises:
        SkipSample: "no_image_after_truncation" when `max_tokens` leaves no room for <image>.
    """
    text = f"{MEDIA_TOKEN}{caption.strip()}{END_OF_CHUNK_TOKEN}{tokenizer.eos_token}"
    input_ids, attention_mask = tokenize_padded(tokenizer, text, max_tokens, skips)
    pad_id, media_id, _ = _special_ids(tokenizer)
    if not bool((input_ids == media_id).any()):
        raise SkipSample("no_image_after_truncation", caption[:50])
    return Sample(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=pair_labels(input_ids, pad_id=pad_id, media_id=media_id),
        images=_image_stack([image], image_processor, 1),
    )


def build_text_sample(
    text: str, tokenizer, *, max_tokens: int, key: str, skips: SkipCounter | None = None
) -> Sample:
    """A text-only document -> Sample without images: `{text}{eos}`, every real token trained
    (a plain causal LM's loss).

    Raises:
        SkipSample: "media_token_in_text" when the text spells `<image>` (it would become the
            media token, which needs an image), "no_trainable_tokens" when nothing is left.
    """
    input_ids, attention_mask = tokenize_padded(
        tokenizer, f"{text}{tokenizer.eos_token}", max_tokens, skips
    )
    pad_id, media_id, _ = _special_ids(tokenizer)
    if bool((input_ids == media_id).any()):
        raise SkipSample("media_token_in_text", key)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    if bool((labels == IGNORE_INDEX).all()):
        raise SkipSample("no_trainable_tokens", key)
    return Sample(input_ids=input_ids, attention_mask=attention_mask, labels=labels, images=None)

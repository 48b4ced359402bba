"""The sample stream of one loader slot, resumable at every batch.

A slot is one DataLoader worker of one rank (`slot = rank * workers + worker`). Shards are split
among slots with no overlap: per pass, the shard list is shuffled with a seed and the slot takes
every `n_slots`-th part, where a part is a shard, or a stride of a shard's records when there are
fewer shards than slots. Records within a part are read in a seeded shuffled order. With
`resampled`, each pass is instead one shard drawn with replacement.

Everything random is a pure function of (seed, pass, shard, record), so the position
(pass, part, record) plus the skip counters is the whole state (`SlotState`): a resumed stream
continues with exactly the samples an uninterrupted one would have produced. Images are fetched
ahead (a thread pool per worker), but documents are consumed strictly in order.
"""

import math
import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import torch

from . import storage
from .config import MAX_NUM_IMAGES
from .documents import ImageRef, InterleavedDoc, PairDoc, TextDoc
from .formats import DatasetFormat
from .mmc4 import MMC4_SIM_THRESHOLD, Mmc4Candidates
from .samples import (
    Sample,
    build_interleaved_sample,
    build_pair_sample,
    build_text_sample,
    decode_image,
)
from .shards import ShardRecords, open_shard
from .skips import SkipCounter, SkipSample

MAX_CONSECUTIVE_SKIPS = 10_000  # then the data is wrong, not unlucky


@dataclass
class StreamConfig:
    """What one corpus stream reads and how it builds samples."""

    format: DatasetFormat
    shards: list[str]
    image_prefix: str | None
    batch_size: int
    max_tokens: int
    max_num_images: int = MAX_NUM_IMAGES
    sim_threshold: float = MMC4_SIM_THRESHOLD
    resampled: bool = False
    seed: int = 0
    lookahead_docs: int = 32  # documents whose images are being fetched ahead
    fetch_threads: int = 16
    retry_deadline_s: float = 300.0  # how long transient storage errors are retried


@dataclass
class SlotState:
    """Where a slot is: pass (or resampled draw), part of the pass, record in the part."""

    passes: int = 0
    part: int = 0
    record: int = 0
    samples: int = 0
    skips: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "SlotState":
        return cls(**data) if data else cls()


@dataclass(frozen=True)
class Part:
    """Records `offset`, `offset + stride`, ... of shard number `index` (URI `shard`)."""

    index: int
    shard: str
    stride: int
    offset: int


def pass_parts(config: StreamConfig, pass_index: int, slot: int, n_slots: int) -> list[Part]:
    """The parts slot `slot` reads in pass `pass_index`."""
    shards = config.shards
    if config.resampled:
        draw = random.Random(f"{config.seed}/draw/{slot}/{pass_index}")
        index = draw.randrange(len(shards))
        return [Part(index, shards[index], 1, 0)]
    order = list(range(len(shards)))
    random.Random(f"{config.seed}/order/{pass_index}").shuffle(order)
    splits = math.ceil(n_slots / len(shards))  # > 1 only when there are fewer shards than slots
    parts = [Part(i, shards[i], splits, j) for i in order for j in range(splits)]
    return parts[slot::n_slots]


def record_order(seed: int, pass_index: int, part: Part, num_records: int) -> list[int]:
    """The seeded order in which a part's records are read in a pass. Seeds use shard numbers,
    not URIs, so a corpus gives the same stream wherever it is stored."""
    order = list(range(num_records))
    random.Random(f"{seed}/records/{pass_index}/{part.index}/{part.offset}").shuffle(order)
    return order


class SlotStream:
    """Batches for one slot. `next_batch()` returns a dict of stacked tensors plus the state that
    resumes right after it."""

    def __init__(
        self,
        config: StreamConfig,
        tokenizer,
        image_processor,
        slot: int,
        n_slots: int,
        state: SlotState | None = None,
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.slot, self.n_slots = slot, n_slots
        self.state = state or SlotState()
        self.skips = SkipCounter()
        self.skips.load(self.state.skips)
        self._fetcher = storage.ImageFetcher(
            config.fetch_threads, retry_deadline_s=config.retry_deadline_s
        )
        self._window: deque = deque()
        self._part_skips = SkipCounter(log_interval_s=float("inf"))
        self._image_prefix = config.image_prefix
        self._documents = self._iter_documents()

    # ------------------------------------------------------------------ records
    def _load_part(self, pass_index: int, part: Part) -> tuple[ShardRecords | None, list[int]]:
        """The part's readable records and the seeded order to read them in (positions into
        them); the shard-level problems met while indexing it go to `self._part_skips`."""
        self._part_skips = SkipCounter(log_interval_s=float("inf"))
        try:
            records = open_shard(
                part.shard,
                self._part_skips,
                keep=lambda index: index % part.stride == part.offset,
                retry_deadline_s=self.config.retry_deadline_s,
            )
        except storage.StorageError as error:
            self._stop_if_unreachable(error)
            self._part_skips.count("shard_unreadable", str(error))
            return None, []
        prefix_for = self.config.format.image_prefix_for
        self._image_prefix = prefix_for(part.shard, self.config.image_prefix)
        return records, record_order(self.config.seed, pass_index, part, len(records))

    def _read(self, records: ShardRecords, j: int, key: str):
        """Record j of a part, or a SkipSample when its bytes can no longer be read."""
        try:
            return records.read(j)
        except storage.StorageError as error:
            self._stop_if_unreachable(error)
            return SkipSample("shard_unreadable", f"{key}: {error}")

    def _iter_documents(self) -> Iterator[tuple]:
        """(position after this document, key, document or SkipSample, skips met while reading
        it, its random seed), in order, forever. Skips met while reading ahead are counted only
        when their document is consumed, so a resume never counts them twice."""
        start = self.state
        pass_index = start.passes
        empty_passes = 0  # consecutive passes in which this slot found no record at all
        max_empty_passes = max(100, 4 * len(self.config.shards))
        carried = SkipCounter(log_interval_s=float("inf"))
        while True:
            parts = pass_parts(self.config, pass_index, self.slot, self.n_slots)
            first_part = start.part if pass_index == start.passes else 0
            produced = False
            for part_index in range(first_part, len(parts)):
                part = parts[part_index]
                resuming = pass_index == start.passes and part_index == start.part
                first_record = start.record if resuming else 0
                records, order = self._load_part(pass_index, part)
                if first_record == 0:  # a part's own problems go with its first document
                    carried.merge(self._part_skips)
                try:
                    for position in range(first_record, len(order)):
                        index = records.indices[order[position]]
                        produced = True
                        key = f"{part.shard}#{index}"
                        doc_skips, carried = carried, SkipCounter(log_interval_s=float("inf"))
                        record = self._read(records, order[position], key)
                        try:
                            if isinstance(record, SkipSample):
                                raise record
                            doc = self.config.format.parse(
                                record, key, self._image_prefix, self.config, doc_skips
                            )
                        except SkipSample as skip:
                            doc = skip
                        seed = f"{self.config.seed}/sample/{pass_index}/{part.index}/{index}"
                        yield (pass_index, part_index, position + 1), key, doc, doc_skips, seed
                finally:
                    if records is not None:
                        records.close()
            empty_passes = 0 if produced else empty_passes + 1
            if empty_passes > max_empty_passes:
                carried.merge(self.skips)  # the shards' problems, never consumed with a document
                raise RuntimeError(
                    f"Loader slot {self.slot} of {self.n_slots} found no record in "
                    f"{empty_passes} passes over {len(self.config.shards)} shards (e.g. "
                    f"{self.config.shards[0]}): are all shards empty or unreadable, or are there "
                    f"fewer records than loader slots? Skipped: {carried.as_dict()}"
                )
            pass_index += 1

    def _stop_if_unreachable(self, error: storage.StorageError) -> None:
        """An outage longer than the retry deadline stops the loader: skipping every document
        until the storage is back would only burn through the data."""
        if error.code == storage.UNREACHABLE:
            raise RuntimeError(
                f"Loader slot {self.slot} of {self.n_slots} stops: {error}. Resume from the last "
                "checkpoint once the storage is back."
            )

    # ------------------------------------------------------------------ images
    def _fetch(self, ref: ImageRef | None) -> Future | bytes | None:
        """Inline bytes as they are; a stored image as the future of its read."""
        if ref is None or ref.data is not None:
            return None if ref is None else ref.data
        return self._fetcher.submit(ref.uri)

    def _pending(self):
        """Refill the look-ahead window and return its oldest document."""
        while len(self._window) < self.config.lookahead_docs:
            position, key, doc, doc_skips, seed = next(self._documents)
            if isinstance(doc, InterleavedDoc | Mmc4Candidates):
                fetches = [self._fetch(ref) for ref in doc.images]
            elif isinstance(doc, PairDoc):
                fetches = [self._fetch(doc.image)]
            else:
                fetches = []
            self._window.append((position, key, doc, doc_skips, seed, fetches))
        return self._window.popleft()

    def _image(self, fetched, min_bytes: int):
        """A decoded image, or None (counted) when it cannot be used."""
        if fetched is None:
            return None
        data = fetched.result() if isinstance(fetched, Future) else fetched
        if isinstance(data, storage.StorageError):
            self._stop_if_unreachable(data)
            reason = "image_unavailable" if data.transient else "missing_image"
            self.skips.count(reason, str(data))
            return None
        try:
            return decode_image(data, min_bytes=min_bytes)
        except SkipSample as skip:
            self.skips.count(skip.reason, skip.detail)
        return None

    # ------------------------------------------------------------------ samples
    def _next_sample(self) -> tuple[str, Sample]:
        """(document key, sample) of the next usable document."""
        fmt = self.config.format
        for _ in range(MAX_CONSECUTIVE_SKIPS):
            position, key, doc, doc_skips, seed, fetches = self._pending()
            self.state.passes, self.state.part, self.state.record = position
            for reason, n in doc_skips.as_dict().items():
                self.skips.count(reason, key, n)
            if isinstance(doc, SkipSample):
                self.skips.count(doc.reason, f"{key}: {doc.detail}")
                continue
            images = [self._image(f, fmt.min_image_bytes) for f in fetches]
            if isinstance(doc, Mmc4Candidates):  # match only the images that can be used
                doc, images = doc.match(images)
            try:
                if isinstance(doc, TextDoc):
                    return key, build_text_sample(
                        doc.text,
                        self.tokenizer,
                        max_tokens=self.config.max_tokens,
                        key=key,
                        skips=self.skips,
                    )
                if isinstance(doc, PairDoc):
                    if images[0] is None:
                        raise SkipSample("no_images", key)
                    return key, build_pair_sample(
                        doc.caption,
                        images[0],
                        self.tokenizer,
                        self.image_processor,
                        max_tokens=self.config.max_tokens,
                        skips=self.skips,
                    )
                return key, build_interleaved_sample(
                    doc,
                    images,
                    self.tokenizer,
                    self.image_processor,
                    max_tokens=self.config.max_tokens,
                    max_num_images=self.config.max_num_images,
                    single_image_drop_prob=fmt.single_image_drop_prob,
                    rng=random.Random(seed),
                    skips=self.skips,
                    text_rule=fmt.text_rule,
                )
            except SkipSample as skip:
                self.skips.count(skip.reason, f"{key}: {skip.detail}")
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} documents in a row could not be used; skipped: "
            f"{self.skips.as_dict()}. Check the dataset type, paths and image prefix."
        )

    def next_batch(self) -> dict:
        """(B, ...) tensors: images (B, N, 1, C, H, W) (not in a text-only batch), input_ids /
        attention_mask / labels (B, L); `keys` (shard#record of each sample), `loader_slot` and
        `loader_state` (the state right after this batch)."""
        keys, samples = zip(
            *(self._next_sample() for _ in range(self.config.batch_size)), strict=True
        )
        self.state.samples += len(samples)
        self.state.skips = self.skips.as_dict()
        batch = {"keys": list(keys)}
        if self.config.format.kind != "text":
            batch["images"] = torch.stack([s.images for s in samples])
        return {
            **batch,
            "input_ids": torch.stack([s.input_ids for s in samples]),
            "attention_mask": torch.stack([s.attention_mask for s in samples]),
            "labels": torch.stack([s.labels for s in samples]),
            "loader_slot": self.slot,
            "loader_state": self.state.to_dict(),
        }

    def close(self) -> None:
        self._window.clear()
        self._fetcher.close()

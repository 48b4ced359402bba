"""get_data: resumable, fault-tolerant loaders for the corpora, as the training loop uses them.

Each rank has a `ResumableLoader` per corpus, described by a `CorpusConfig` (data/config.py). An
epoch is `num_batches` batches (`num_samples // (batch_size * world_size)`); the underlying stream
continues across epochs (a new pass over the shards starts when one ends), so every rank
yields exactly the same number of batches per epoch and ranks stay in step.

Exact resume: every batch carries the state of the slot (rank, worker) that produced it. The loader
records the states of the batches the trainer has consumed; `state_dict()` / `load_state_dict()`
save and restore them with the position in the epoch. Batch i of an epoch comes from logical worker
i % workers; after a resume at batch k, physical worker p plays logical worker (k + p) % workers,
so the DataLoader's round-robin continues exactly where it stopped.
"""

import math
from dataclasses import dataclass, field

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .config import CorpusConfig
from .formats import get_format
from .manifest import resolve_shards
from .stream import SlotState, SlotStream, StreamConfig


@dataclass
class EpochPlan:
    start_batch: int
    num_batches: int
    states: dict[int, dict] = field(default_factory=dict)


class CorpusDataset(IterableDataset):
    """Batches of one corpus for one rank; each DataLoader worker runs one slot's stream."""

    def __init__(
        self,
        config: StreamConfig,
        tokenizer,
        image_processor,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, num_workers)
        self.plan = EpochPlan(0, 0)

    @property
    def n_slots(self) -> int:
        return self.world_size * self.workers

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        plan = self.plan
        logical = (plan.start_batch + physical) % self.workers
        slot = self.rank * self.workers + logical
        count = len(range(plan.start_batch + physical, plan.num_batches, self.workers))
        stream = SlotStream(
            self.config,
            self.tokenizer,
            self.image_processor,
            slot,
            self.n_slots,
            SlotState.from_dict(plan.states.get(slot)),
        )
        try:
            for _ in range(count):
                yield stream.next_batch()
        finally:
            stream.close()


class ResumableLoader:
    """Iterating yields one epoch of batches (dicts of tensors); see the module docstring."""

    def __init__(
        self, dataset: CorpusDataset, num_batches: int, num_workers: int, pin_memory: bool = False
    ):
        if num_batches < 1:
            raise ValueError("An epoch must have at least one batch: raise train_num_samples.")
        self.dataset = dataset
        self.num_batches = num_batches
        self.num_samples = num_batches * dataset.config.batch_size * dataset.world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epoch = 0
        self.batches_done = 0
        self.states: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches_done = 0

    def __iter__(self):
        if self.batches_done >= self.num_batches:
            self.batches_done = 0
        self.dataset.plan = EpochPlan(self.batches_done, self.num_batches, dict(self.states))
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        for batch in loader:
            self.states[int(batch.pop("loader_slot"))] = batch.pop("loader_state")
            self.batches_done += 1
            yield batch

    def skip_counts(self) -> dict[str, int]:
        """Skipped inputs by reason, summed over this rank's workers (batches consumed so far)."""
        total: dict[str, int] = {}
        for state in self.states.values():
            for reason, n in state["skips"].items():
                total[reason] = total.get(reason, 0) + n
        return total

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "num_batches": self.num_batches,
            "n_slots": self.dataset.n_slots,
            "num_shards": len(self.dataset.config.shards),
            "states": {str(slot): state for slot, state in self.states.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        expected = (self.dataset.n_slots, len(self.dataset.config.shards), self.num_batches)
        found = (state["n_slots"], state["num_shards"], state["num_batches"])
        if found != expected:
            raise ValueError(
                "The data-loader state was saved with (loader slots, shards, batches per epoch) = "
                f"{found}, this run has {expected}. Exact resume needs the same number of "
                "processes, --workers, shards and train_num_samples / batch size."
            )
        self.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
        self.states = {int(slot): s for slot, s in state["states"].items()}


@dataclass
class DataInfo:
    """What the training loop gets per corpus (upstream's name and fields)."""

    dataloader: ResumableLoader


def batches_per_epoch(corpus: CorpusConfig, world_size: int) -> int:
    """An epoch's batches: the whole batches of all `world_size` processes in num_samples."""
    return math.floor(corpus.num_samples / (corpus.batch_size * world_size))


def get_data(
    corpus: CorpusConfig,
    image_processor,
    tokenizer,
    *,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
) -> DataInfo:
    """The loader of one corpus for process `rank` of `world_size`, positioned at `epoch`.

    `corpus.dataset_type`: omnicorpus | obelics | omnicorpus_sim | mmc4 | mmc4_wds | laion |
    laion_table, or OmniCorpus's names `laionen2b` (= laion_table) and
    `omnicorpus_w_similarities` (= omnicorpus_sim); open_flamingo.data.formats says what each
    reads. An epoch is `corpus.num_samples // (corpus.batch_size * world_size)` batches.
    """
    fmt = get_format(corpus.dataset_type)
    name = corpus.dataset_type
    if corpus.shards is None:
        raise ValueError(f"--{fmt.flag_base}_shards is required for dataset type {name!r}")
    if fmt.needs_image_prefix and corpus.image_prefix is None:
        raise ValueError(f"--{fmt.flag_base}_image_prefix is required for dataset type {name!r}")
    config = StreamConfig(
        format=fmt,
        shards=resolve_shards(corpus.shards, fmt),
        image_prefix=corpus.image_prefix,
        batch_size=corpus.batch_size,
        max_tokens=corpus.max_tokens,
        max_num_images=corpus.max_num_images,
        sim_threshold=corpus.sim_threshold,
        resampled=corpus.resampled,
        seed=corpus.seed,
    )
    dataset = CorpusDataset(
        config,
        tokenizer,
        image_processor,
        rank=rank,
        world_size=world_size,
        num_workers=corpus.workers,
    )
    loader = ResumableLoader(dataset, batches_per_epoch(corpus, world_size), corpus.workers)
    loader.set_epoch(epoch)
    return DataInfo(loader)

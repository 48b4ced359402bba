"""get_data: resumable, fault-tolerant loaders for the corpora, as the training loop uses them.

Each rank has a `ResumableLoader` per corpus. An epoch is `num_batches` batches
(`train_num_samples // (batch_size * world_size)`); the underlying stream continues across epochs
(a new pass over the shards starts when one ends), so every rank yields exactly the same number
of batches per epoch and ranks stay in step.

Exact resume: every batch carries the state of the slot (rank, worker) that produced it. The loader
records the states of the batches the trainer has consumed; `state_dict()` / `load_state_dict()`
save and restore them with the position in the epoch. Batch i of an epoch comes from logical worker
i % workers; after a resume at batch k, physical worker p plays logical worker (k + p) % workers,
so the DataLoader's round-robin continues exactly where it stopped.
"""

import math
from dataclasses import dataclass, field

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

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

    def set_epoch(self, epoch: int) -> None:
        self.dataloader.set_epoch(epoch)


def _arg(args, *names, default=None):
    for name in names:
        if getattr(args, name, None) is not None:
            return getattr(args, name)
    return default


def get_data(args, image_processor, tokenizer, dataset_type: str, epoch: int = 0) -> DataInfo:
    """The loader of one corpus for this rank.

    dataset_type: omnicorpus | obelics | mmc4 | mmc4_wds | laion | laion_table.
    Reads from `args`: `<type>_shards` (a directory / key prefix, manifest or brace pattern; the
    `_wds` / `_table` suffix may be dropped, e.g. `laion_shards`), `<type>_image_prefix`,
    `batch_size_<role>`, `max_tokens_<role>`, `train_num_samples_<role>` with role `interleaved`
    or `laion` (upstream's `batch_size_mmc4` etc. also work), `workers`, `seed`,
    `dataset_resampled`, `world_size`, `rank`, `mmc4_max_num_images`, `mmc4_textsim_threshold`.
    """
    fmt = get_format(dataset_type)
    base = dataset_type.removesuffix("_wds").removesuffix("_table")
    role = "interleaved" if fmt.kind == "interleaved" else "laion"
    shards_spec = _arg(args, f"{dataset_type}_shards", f"{base}_shards")
    if shards_spec is None:
        raise ValueError(f"--{base}_shards is required for dataset type {dataset_type!r}")
    image_prefix = _arg(args, f"{dataset_type}_image_prefix", f"{base}_image_prefix")
    if fmt.needs_image_prefix and image_prefix is None:
        raise ValueError(f"--{base}_image_prefix is required for dataset type {dataset_type!r}")
    batch_size = _arg(args, f"batch_size_{role}", f"batch_size_{base}")
    max_tokens = _arg(args, f"max_tokens_{role}", f"max_tokens_{base}")
    num_samples = _arg(args, f"train_num_samples_{role}", f"train_num_samples_{base}")
    world_size, rank = _arg(args, "world_size", default=1), _arg(args, "rank", default=0)
    workers = _arg(args, "workers", default=0)

    config = StreamConfig(
        format=fmt,
        shards=resolve_shards(shards_spec),
        image_prefix=image_prefix,
        batch_size=batch_size,
        max_tokens=max_tokens,
        max_num_images=_arg(args, "mmc4_max_num_images", default=6),
        sim_threshold=_arg(args, "mmc4_textsim_threshold", default=0.24),
        resampled=bool(_arg(args, "dataset_resampled", default=False)),
        seed=_arg(args, "seed", default=0),
    )
    dataset = CorpusDataset(
        config, tokenizer, image_processor, rank=rank, world_size=world_size, num_workers=workers
    )
    num_batches = math.floor(num_samples / (batch_size * world_size))
    loader = ResumableLoader(dataset, num_batches, workers)
    loader.set_epoch(epoch)
    return DataInfo(loader)

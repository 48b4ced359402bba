"""What each micro-step trains on: the batches of its sources, in the order the step runs them.

* `PairedFeed`: upstream's two corpora, one LAION and one interleaved batch every micro-step;
  an epoch of the run is an epoch of both loaders (they have as many batches).
* `MixtureFeed`: a `--mixture` (mixture.py): the batch of every pair source, then the batch of
  the one drawn source. An epoch of the run is the spec's `steps` micro-steps; each source
  starts its own next epoch when its loader's ends.

Both give the trainer the objects whose states a checkpoint saves per rank (`stateful`): the
loaders by name (the paired feed's are exactly the two loaders of before), plus the draw.
"""

from open_flamingo.data.loader import ResumableLoader, get_data

from .config import OptimConfig, TrainConfig
from .mixture import MixtureConfig, SourceDraw
from .step import StepPart, paired_parts

DRAW_STATE = "_draw"  # the draw's entry among the loader states (no source name starts with _)


class PairedFeed:
    """One interleaved and one LAION batch per micro-step (upstream's trainer)."""

    per_source_metrics = False  # the rows keep upstream's keys

    def __init__(self, loaders: dict, optim: OptimConfig):
        self.loaders = loaders
        self.optim = optim
        self.num_batches = len(loaders["interleaved"])
        self.source_names = ("interleaved", "laion")
        self._iterators: dict = {}

    def start_epoch(self, epoch: int) -> None:
        for loader in self.loaders.values():
            loader.set_epoch(epoch)
        self._iterators = {name: iter(loader) for name, loader in self.loaders.items()}

    def next_parts(self) -> list[StepPart]:
        batch_interleaved = next(self._iterators["interleaved"])
        batch_laion = next(self._iterators["laion"])
        return paired_parts(batch_interleaved, batch_laion, self.optim)

    def stateful(self) -> dict:
        return self.loaders

    def source_epochs(self) -> dict[str, int]:
        return {}


class MixtureFeed:
    """The pair sources' batches and one drawn source's batch per micro-step."""

    per_source_metrics = True

    def __init__(self, mixture: MixtureConfig, loaders: dict, seed: int):
        self.mixture = mixture
        self.loaders = loaders
        self.num_batches = mixture.steps
        self.source_names = tuple(source.name for source in mixture.sources)
        drawn = mixture.drawn
        self.draw = SourceDraw([s.name for s in drawn], [s.weight for s in drawn], seed)
        self._multipliers = {source.name: source.loss_multiplier for source in mixture.sources}
        self._iterators: dict = {}

    def start_epoch(self, epoch: int) -> None:
        """The run's epoch; the sources' epochs are their own (`_next_batch`)."""
        self._iterators = {}

    def _next_batch(self, name: str) -> dict:
        """The source's next batch; when its epoch has run out, the first of its next one."""
        loader = self.loaders[name]
        iterator = self._iterators.get(name)
        for _ in range(2):
            if iterator is None:
                if loader.batches_done >= len(loader):
                    loader.set_epoch(loader.epoch + 1)
                iterator = self._iterators[name] = iter(loader)
            try:
                return next(iterator)
            except StopIteration:
                iterator = None
        raise RuntimeError(f"source {name!r}: a new epoch of its loader gave no batch")

    def next_parts(self) -> list[StepPart]:
        parts = [
            StepPart(source.name, self._next_batch(source.name), source.loss_multiplier)
            for source in self.mixture.every_step
        ]
        name = self.draw.next()
        return [*parts, StepPart(name, self._next_batch(name), self._multipliers[name])]

    def stateful(self) -> dict:
        return {**self.loaders, DRAW_STATE: self.draw}

    def source_epochs(self) -> dict[str, int]:
        """The epochs each source has started, from 0."""
        return {name: loader.epoch for name, loader in self.loaders.items()}


def make_feed(config: TrainConfig, loaders: dict) -> PairedFeed | MixtureFeed:
    """The feed of a run: its mixture's, or upstream's two corpora."""
    if config.mixture is None:
        return PairedFeed(loaders, config.optim)
    return MixtureFeed(config.mixture, loaders, config.seed)


def mixture_loaders(
    mixture: MixtureConfig, image_processor, tokenizer, *, rank: int, world_size: int
) -> dict[str, ResumableLoader]:
    """A loader per source of the mixture, by name."""
    return {
        source.name: get_data(
            mixture.corpus_for(source, world_size),
            image_processor,
            tokenizer,
            rank=rank,
            world_size=world_size,
        ).dataloader
        for source in mixture.sources
    }

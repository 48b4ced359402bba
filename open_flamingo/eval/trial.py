"""What every task shares within one trial (dataset, shot count, seed): the batches of this process
with their queries and demonstrations, the gathered predictions and their file."""

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .distributed import World, gather_to_main
from .rices import RICES
from .sampling import effective_num_shots, make_plan, shard

logger = logging.getLogger(__name__)


@dataclass
class TaskData:
    """The two splits of a dataset: demonstrations come from `train`, queries from `test`."""

    name: str
    train: object
    test: object
    rices: RICES | None = None


@dataclass
class TrialBatch:
    """One batch: per query its item, its demonstrations' items and their orders."""

    position: int  # the batch's index in the global plan
    queries: list[dict]
    demonstrations: list[list[dict]]
    permutations: list[list[list[int]]]


class _TrainItems:
    """Training items by index, each loaded once per trial (demonstrations repeat)."""

    def __init__(self, dataset):
        self.dataset, self.loaded = dataset, {}

    def __getitem__(self, index: int) -> dict:
        if index not in self.loaded:
            self.loaded[index] = self.dataset[index]
        return self.loaded[index]


def trial_batches(
    data: TaskData,
    *,
    args,
    world: World,
    num_shots: int,
    seed: int,
    ensemble_prompts: bool = False,
) -> Iterator[TrialBatch]:
    """This process's batches of the trial, with demonstrations (random from the seeded query
    set, or by RICES), a progress bar on rank 0."""
    shots = effective_num_shots(num_shots)
    plan = make_plan(
        num_test=len(data.test),
        num_train=len(data.train),
        num_samples=args.num_samples,
        query_set_size=args.query_set_size,
        batch_size=args.batch_size,
        num_shots=num_shots,
        seed=seed,
        rices=data.rices is not None,
        ensemble_prompts=ensemble_prompts,
        dataset_name=data.name,
    )
    train_items = _TrainItems(data.train)
    mine = shard(plan, world.rank, world.world_size)
    desc = f"{data.name} {num_shots}-shot seed {seed}"
    for batch in tqdm(mine, desc=desc, disable=not world.is_main):
        queries = [data.test[i] for i in batch.test_indices]
        if data.rices is not None:
            demo_indices = data.rices.find_indices([q["image"] for q in queries], shots)
        else:
            demo_indices = batch.demo_indices
        demonstrations = [[train_items[j] for j in row] for row in demo_indices]
        yield TrialBatch(batch.position, queries, demonstrations, batch.permutations)


def gather_predictions(predictions: list[tuple[int, dict]], world: World) -> list[dict] | None:
    """(batch position, prediction) pairs of all processes -> predictions in plan order, on
    rank 0 (None elsewhere): the same list whatever the number of processes."""
    gathered = gather_to_main(predictions, world)
    if gathered is None:
        return None
    return [prediction for _, prediction in sorted(gathered, key=lambda pair: pair[0])]


@contextmanager
def predictions_file(args, dataset_name: str, num_shots: int, seed: int, trial: int):
    """A JSON path for the predictions: kept in --predictions_dir when given (as
    `<dataset>_<shots>shot_trial<trial>_seed<seed>.json`), else a temporary file."""
    name = f"{dataset_name}_{num_shots}shot_trial{trial}_seed{seed}.json"
    if args.predictions_dir:
        folder = Path(args.predictions_dir)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder / name
        return
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / name


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))

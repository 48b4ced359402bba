"""Which test items are evaluated, in which batches, with which random demonstrations.

The plan reproduces upstream OpenFlamingo's random streams for a single process:
- `np.random.seed(seed)`, then `choice(len(test), num_samples, replace=False)` picks the test
  subset and (random demonstrations only) `choice(len(train), query_set_size, replace=False)`
  the query set;
- the subset is visited in `DistributedSampler(shuffle=True, seed=0)` order for one replica,
  i.e. `torch.randperm(num_samples)` with a generator seeded 0, in batches of `batch_size`;
- Python's `random.seed(seed)` then draws `random.sample(query_set, shots)` per query, batch
  after batch (and the prompt-ensembling shuffles, when enabled).

Upstream seeds with `seed + rank` and shards with DistributedSampler, so its demonstrations and
scores change with the number of processes. Here every process builds the same global plan and
takes whole batches `rank::world_size`: any number of processes gives the single-process result.
"""

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

ZERO_SHOT_TEXT_DEMONSTRATIONS = 2


def effective_num_shots(num_shots: int) -> int:
    """Demonstrations shown at `num_shots`: 0 shots uses 2 text-only ones (Flamingo's trick)."""
    return num_shots if num_shots > 0 else ZERO_SHOT_TEXT_DEMONSTRATIONS


@dataclass
class Batch:
    """One batch of the plan.

    test_indices: indices into the test dataset, one per query.
    demo_indices: per query, indices into the train dataset (None when RICES chooses them).
    permutations: per query, orders of its demonstrations for prompt ensembling (each a list
        of positions into its demonstrations); `[[0, 1, ..., shots-1]]` without ensembling.
    """

    position: int
    test_indices: list[int]
    demo_indices: list[list[int]] | None
    permutations: list[list[list[int]]] = field(default_factory=list)


def make_plan(
    *,
    num_test: int,
    num_train: int,
    num_samples: int,
    query_set_size: int,
    batch_size: int,
    num_shots: int,
    seed: int,
    rices: bool,
    ensemble_prompts: bool = False,
    dataset_name: str = "dataset",
) -> list[Batch]:
    """The global evaluation plan of one trial (identical on every process)."""
    if num_samples <= 0:
        num_samples = num_test
    if num_samples > num_test:
        raise ValueError(
            f"--num_samples {num_samples} exceeds the {num_test} test items of {dataset_name}"
        )
    shots = effective_num_shots(num_shots)
    numpy_rng = np.random.RandomState(seed)  # the same stream as np.random.seed(seed)
    test_subset = numpy_rng.choice(num_test, num_samples, replace=False).tolist()
    query_set = None
    if not rices:
        if query_set_size > num_train:
            raise ValueError(
                f"--query_set_size {query_set_size} exceeds the {num_train} training items of "
                f"{dataset_name}; pass --query_set_size {num_train} or less"
            )
        query_set = numpy_rng.choice(num_train, query_set_size, replace=False).tolist()
        if shots > len(query_set):
            raise ValueError(
                f"{shots} demonstrations requested but the query set of {dataset_name} has "
                f"{len(query_set)} items"
            )

    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(0)).tolist()
    python_rng = random.Random(seed)
    num_permutations = min(6, math.factorial(shots)) if ensemble_prompts else 1
    plan = []
    for position, start in enumerate(range(0, num_samples, batch_size)):
        test_indices = [test_subset[i] for i in order[start : start + batch_size]]
        demos = None
        if query_set is not None:
            demos = [python_rng.sample(query_set, shots) for _ in test_indices]
        permutations = [[list(range(shots))] for _ in test_indices]
        if ensemble_prompts:  # upstream shuffles each query's demonstrations in place, again
            permutations = [[] for _ in test_indices]  # and again, once per permutation
            current = [list(range(shots)) for _ in test_indices]
            for _ in range(num_permutations):
                for row, positions in enumerate(current):
                    python_rng.shuffle(positions)
                    permutations[row].append(list(positions))
        plan.append(Batch(position, test_indices, demos, permutations))
    return plan


def shard(plan: list[Batch], rank: int, world_size: int) -> list[Batch]:
    """Whole batches for this process: batch k goes to process k % world_size."""
    return plan[rank::world_size]

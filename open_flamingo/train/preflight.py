"""What a training command line names on disk and in storage, checked before anything loads.

Every path (the LM, its tokenizer, start weights, the resume folder, each corpus's shards and
images) and every count (batches per epoch of each corpus, optimizer steps of the run) is checked
in one pass, and the problems are reported together, so that a run set up wrong fails in seconds
with all its faults named instead of one at a time after the model has loaded.
"""

import os
from pathlib import Path

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.formats import get_format
from open_flamingo.data.loader import batches_per_epoch
from open_flamingo.data.manifest import resolve_shards
from open_flamingo.data.storage import StorageError, has_files
from open_flamingo.src.pretrained_paths import resolve_pretrained_path

from .checkpointing import LATEST, TRAINER_STATE, is_complete
from .config import TrainConfig

ROLES = ("interleaved", "laion")


def launch_world_size() -> int:
    """Processes of this launch: `accelerate launch`, torchrun and deepspeed set WORLD_SIZE, as
    accelerate itself reads it; a plain `python` run is one process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def model_problems(config: TrainConfig) -> list[str]:
    model, problems = config.model, []
    for flag, path in (("lm_path", model.lm_path), ("tokenizer_path", model.tokenizer_path)):
        try:
            resolve_pretrained_path(path)
        except FileNotFoundError as error:
            problems.append(f"--{flag}: {error}")
    start = model.load_from_pretrained
    if start and not Path(start).is_file():
        problems.append(f"--load_from_pretrained {start}: no such file")
    resume = config.checkpoint.resume_from_checkpoint
    if resume and resume != LATEST and not is_complete(Path(resume)):
        problems.append(
            f"--resume_from_checkpoint {resume} is not a checkpoint folder of this trainer (no "
            f"{TRAINER_STATE}): pass <run>/checkpoint-<step> or '{LATEST}'; to start from "
            "released weights use --load_from_pretrained"
        )
    return problems


def corpus_problems(corpus: CorpusConfig) -> list[str]:
    """Its shards resolve to at least one shard, and its image store holds files."""
    fmt, problems = get_format(corpus.dataset_type), []
    try:
        resolve_shards(corpus.shards, fmt)
    except (ValueError, FileNotFoundError, StorageError) as error:
        problems.append(f"--{fmt.flag_base}_shards {corpus.shards}: {error}")
    prefix = corpus.image_prefix
    if fmt.needs_image_prefix and prefix is not None:
        try:
            found = has_files(prefix)
        except StorageError as error:
            problems.append(f"--{fmt.flag_base}_image_prefix {prefix}: {error}")
        else:
            if not found:
                problems.append(
                    f"--{fmt.flag_base}_image_prefix {prefix}: no such folder, or it holds no "
                    "files (its records name images stored there)"
                )
    return problems


def corpora(config: TrainConfig) -> list[CorpusConfig]:
    """The corpora the run reads: a mixture's sources, or the interleaved corpus and LAION."""
    if config.mixture is not None:
        return [source.corpus for source in config.mixture.sources]
    return [config.interleaved, config.laion]


def count_problems(config: TrainConfig, world_size: int) -> list[str]:
    """Each corpus has a batch per process, both have the same number of batches per epoch (a
    step takes one of each), and the run takes at least one optimizer step."""
    if config.mixture is not None:
        return mixture_count_problems(config, world_size)
    corpora = dict(zip(ROLES, (config.interleaved, config.laion), strict=True))
    batches = {role: batches_per_epoch(corpus, world_size) for role, corpus in corpora.items()}
    problems = [
        f"--train_num_samples_{role} {corpora[role].num_samples} is less than one batch "
        f"(--batch_size_{role} {corpora[role].batch_size} x {world_size} processes)"
        for role, count in batches.items()
        if count < 1
    ]
    if problems:
        return problems
    if batches["interleaved"] != batches["laion"]:
        per_batch = config.laion.batch_size * world_size
        return [
            "Each step takes one interleaved and one LAION batch, so both corpora need the same "
            f"number of batches per epoch: interleaved has {batches['interleaved']}, LAION "
            f"{batches['laion']} (with {world_size} processes). Set --train_num_samples_laion to "
            f"{batches['interleaved'] * per_batch}."
        ]
    run_batches = config.optim.num_epochs * batches["interleaved"]
    return no_optimizer_step(
        config,
        run_batches,
        "batches",
        "--train_num_samples_interleaved / --train_num_samples_laion",
    )


def find_problems(config: TrainConfig, world_size: int, *, counts: bool = True) -> list[str]:
    """Every problem of the paths, and (`counts`: only meaningful when every number of the flags
    is valid) of the batch counts."""
    problems = count_problems(config, world_size) if counts else []
    problems += model_problems(config)
    for corpus in corpora(config):
        if corpus.shards is not None:  # a missing shards flag is a flag problem
            problems += corpus_problems(corpus)
    return problems


def mixture_count_problems(config: TrainConfig, world_size: int) -> list[str]:
    """Each source has a batch per process in its epoch, and the run takes at least one
    optimizer step (mixture.py: the run is --num_epochs x `steps` micro-steps)."""
    mixture = config.mixture
    problems = []
    for source in mixture.sources:
        corpus = mixture.corpus_for(source, world_size)
        if batches_per_epoch(corpus, world_size) < 1:
            problems.append(
                f"{mixture.path}: source {source.name}: num_samples {corpus.num_samples} is less "
                f"than one batch (batch_size {corpus.batch_size} x {world_size} processes)"
            )
    run_batches = config.optim.num_epochs * mixture.steps
    return problems + no_optimizer_step(config, run_batches, "micro-steps", "the mixture's steps")


def no_optimizer_step(config: TrainConfig, run_batches: int, unit: str, length: str) -> list[str]:
    """The problem of a run whose `run_batches` micro-steps make no optimizer step; `length`
    names what else sets the run's length besides --num_epochs."""
    accumulation = config.optim.gradient_accumulation_steps
    if run_batches >= accumulation:
        return []
    return [
        f"--gradient_accumulation_steps {accumulation} exceeds the {run_batches} {unit} of the "
        f"run: no optimizer step would be taken. Lower it, or raise --num_epochs / {length}."
    ]

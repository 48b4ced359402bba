"""Training checkpoints: atomic, durable, verified, and exactly resumable.

A checkpoint folder `<run>/checkpoint-<step>/` holds:
* `checkpoint.pt`: the trainable weights in the released format (perceiver, cross-attention,
  input embedding), loadable with `model.load_state_dict(torch.load(path), strict=False)`;
* the optimizer: `optimizer.pt` (under FSDP whole tensors keyed by parameter name), or
  DeepSpeed's (ZeRO-sharded) files under `deepspeed/`. The training backend (backend/) gives
  these weights and optimizer files and loads them back; this module writes and reads the rest;
* `scheduler.pt`, `trainer_state.json` (step, epoch, position in the epoch, counters, and the
  settings that fix the data order);
* per rank: `rng_rank<r>.pt` (Python, NumPy, torch and CUDA generators, as tensors and numbers)
  and `loaders_rank<r>.json` (the data-loader states);
* `manifest.json`: the size and CRC-32 of every other file (checkpoint_io.py).

Saving: files are written under `.checkpoint-<step>.incomplete`, each fsynced; the ranks then
agree that none failed, and the main process writes `trainer_state.json` and the manifest,
fsyncs the folder, renames it, and replaces `<run>/latest` atomically. A failure on any rank (a
full disk: "No space left on device while writing ...") makes every rank raise
CheckpointWriteError and the partial folder is removed. Weights holding a NaN or infinity are
never written (NonFiniteWeightsError).

Resuming: nothing in a checkpoint is unpickled. "latest" is the newest checkpoint that
verifies; each newer one that does not is skipped with a warning saying why. A checkpoint named
explicitly must verify, else CheckpointError names the file and the problem.
"""

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from open_flamingo.src.checkpoint import read_checkpoint

from .agreement import any_rank
from .backend import TrainingBackend
from .backend.deepspeed_zero import ENGINE_FOLDER
from .checkpoint_io import (
    CheckpointError,
    CheckpointWriteError,
    check_deepspeed_files,
    first_nonfinite,
    fsync_folder,
    load_file,
    read_json,
    save_file,
    verify_checkpoint,
    write_error,
    write_manifest,
    write_text,
)

logger = logging.getLogger(__name__)

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint folder
_NAME = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteWeightsError(RuntimeError):
    """Weights holding a NaN or infinity, which are never saved."""


def is_complete(path: Path) -> bool:
    """Whether `path` is a checkpoint folder of this trainer, written to the end."""
    return (path / TRAINER_STATE).is_file()


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a run folder, ascending."""
    if not run_dir.is_dir():
        return []
    steps = []
    for path in run_dir.iterdir():
        match = _NAME.match(path.name)
        if match and is_complete(path):
            steps.append(int(match[1]))
    return sorted(steps)


# --- which checkpoint, and whether it can be trusted -------------------------------------------


def validate_checkpoint(path: Path) -> None:
    """Everything a resume reads, checked before anything is loaded: the manifest (sizes and
    CRC-32), every file loading weights-only (DeepSpeed's too), every JSON file parsing, and the
    weights and optimizer state being finite. Raises CheckpointError naming file and problem."""
    verify_checkpoint(path)
    state = read_json(path / TRAINER_STATE)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path / TRAINER_STATE}: not a trainer state (no integer 'step')")
    for file in sorted(path.glob("*.pt")):
        loaded = load_file(file, tensor_data=False)
        bad = first_nonfinite(loaded) if file.name in ("checkpoint.pt", "optimizer.pt") else None
        if bad is not None:
            raise CheckpointError(f"{file}: tensor {bad} holds NaN or infinity")
    for file in sorted(path.glob("*.json")):
        read_json(file)
    if (path / ENGINE_FOLDER).is_dir():  # before DeepSpeed unpickles them on resume
        check_deepspeed_files(path / ENGINE_FOLDER)


def check_pretrained(path: Path) -> None:
    """`--load_from_pretrained`: refuse a file that does not load weights-only as a state dict,
    or that holds a NaN or infinity, naming the file and the tensor. Raises CheckpointError."""
    loaded = load_file(path, tensor_data=False)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: not a state dict (a {type(loaded).__name__})")
    bad = first_nonfinite(read_checkpoint(loaded))
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN or infinity")


def resolve_resume(spec: str, run_dir: Path) -> Path | None:
    """`--resume_from_checkpoint`: a checkpoint folder, which must validate, or "latest": the
    newest checkpoint of `run_dir` that validates (None if there is none), with a warning for
    each newer one skipped. Raises CheckpointError."""
    if spec != LATEST:
        path = Path(spec)
        if not is_complete(path):
            raise CheckpointError(f"{path} is not a complete checkpoint folder")
        validate_checkpoint(path)
        return path
    skipped = []
    for step in reversed(checkpoint_steps(run_dir)):
        path = run_dir / f"checkpoint-{step}"
        try:
            validate_checkpoint(path)
        except CheckpointError as error:
            logger.warning("skipping %s, which cannot be resumed: %s", path.name, error)
            skipped.append(str(error))
            continue
        if skipped:
            logger.warning("resuming from %s, the newest checkpoint that verifies", path.name)
        return path
    if skipped:
        raise CheckpointError(f"no checkpoint of {run_dir} verifies: {'; '.join(skipped)}")
    return None


# --- RNG states, as tensors and numbers (loadable weights-only) ---------------------------------


def _rng_state() -> dict:
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(words), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- saving -------------------------------------------------------------------------------------


def _write_parts(
    backend: TrainingBackend, model, folder: Path, parts: dict, loader_states: dict
) -> CheckpointWriteError | None:
    """Every rank writes its files into `folder`: the engine's own (DeepSpeed's), then (main
    process) `parts`, a torch object per file name, then its own RNG and loader states. Returns
    the first failure instead of raising."""
    accelerator = backend.accelerator
    failure = backend.write_engine_files(model, folder)
    try:
        if failure is None and accelerator.is_main_process:
            for name, obj in parts.items():
                save_file(obj, folder / name)
        if failure is None:
            rank = accelerator.process_index
            save_file(_rng_state(), folder / f"rng_rank{rank}.pt")
            write_text(folder / f"loaders_rank{rank}.json", json.dumps(loader_states))
    except CheckpointWriteError as error:
        failure = error
    return failure


def _publish(tmp: Path, final: Path, trainer_state: dict) -> CheckpointWriteError | None:
    """Main process: seal `tmp` (trainer state, manifest, fsync), rename it to `final` and
    point `latest` at it. Returns a failure instead of raising."""
    try:
        write_text(tmp / TRAINER_STATE, json.dumps(trainer_state, indent=1))
        write_manifest(tmp)
        fsync_folder(tmp)
        if final.exists():  # a checkpoint of this step from an earlier, interrupted attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_folder(final.parent)
        pointer = final.parent / f"{LATEST}.tmp"
        write_text(pointer, final.name)
        os.replace(pointer, final.parent / LATEST)
        fsync_folder(final.parent)
    except CheckpointWriteError as error:
        return error
    except OSError as error:
        return write_error(error, tmp)
    return None


def save_checkpoint(
    backend: TrainingBackend,
    model,
    optimizer,
    scheduler,
    loaders: dict,
    trainer_state: dict,
    run_dir: Path,
) -> Path:
    """Write a checkpoint of this step (all ranks call this). Returns its folder. The backend
    gives the weights and the optimizer state (backend/).

    Raises NonFiniteWeightsError (nothing written) or CheckpointWriteError (the partial folder
    removed) on every rank alike."""
    accelerator = backend.accelerator
    step = trainer_state["step"]
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.incomplete"
    main = accelerator.is_main_process

    weights = backend.released_weights(model)  # collectives first: every rank calls them
    parts = {
        "checkpoint.pt": weights,
        "scheduler.pt": scheduler.state_dict(),
        **backend.optimizer_files(model, optimizer),
    }
    bad = first_nonfinite(weights) if main else None
    if any_rank(accelerator, bad is not None):
        raise NonFiniteWeightsError(
            f"step {step}: weight {bad or '(named by the main process)'} holds NaN or infinity, "
            f"so checkpoint-{step} was not written; the checkpoints in {run_dir} are unchanged"
        )

    failure = None
    if main:
        for stale in run_dir.glob(".checkpoint-*.incomplete"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as error:
            failure = write_error(error, tmp)
    if not any_rank(accelerator, failure is not None):
        loader_states = {name: loader.state_dict() for name, loader in loaders.items()}
        failure = _write_parts(backend, model, tmp, parts, loader_states)
        if not any_rank(accelerator, failure is not None) and main:
            failure = _publish(tmp, final, trainer_state)
    if any_rank(accelerator, failure is not None):
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = failure or "another process could not write its part (see its log)"
        raise CheckpointWriteError(
            f"checkpoint-{step} was not saved: {reason}. Its partial folder was removed; the "
            f"checkpoints already in {run_dir} are unchanged."
        )
    return final


# --- loading ------------------------------------------------------------------------------------


def load_training_checkpoint(
    backend: TrainingBackend, model, optimizer, scheduler, loaders: dict, path: Path
) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the trainer state. Call it with a
    checkpoint that `validate_checkpoint` accepted: every file is read weights-only or as JSON
    again, but DeepSpeed reads its own files (with pickle) here."""
    accelerator = backend.accelerator
    backend.load_state(model, optimizer, path)
    scheduler.load_state_dict(load_file(path / "scheduler.pt"))
    rank = accelerator.process_index
    rng_file = path / f"rng_rank{rank}.pt"
    loaders_file = path / f"loaders_rank{rank}.json"
    if not rng_file.is_file() or not loaders_file.is_file():
        raise CheckpointError(
            f"{path} has no state for rank {rank}: resume with the same number of processes "
            "that wrote it."
        )
    _set_rng_state(load_file(rng_file))
    for name, state in read_json(loaders_file).items():
        loaders[name].load_state_dict(state)
    return read_json(path / TRAINER_STATE)


def delete_previous_checkpoints(run_dir: Path, keep_step: int, special_steps: list[int]) -> None:
    """Remove complete checkpoints older than `keep_step`, except the special ones."""
    for step in checkpoint_steps(run_dir):
        if step < keep_step and step not in special_steps:
            shutil.rmtree(run_dir / f"checkpoint-{step}", ignore_errors=True)

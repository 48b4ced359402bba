"""Training checkpoints: atomic, complete, and exactly resumable.

A checkpoint folder `<run>/checkpoint-<step>/` holds:
* `checkpoint.pt`: the trainable weights in the released format (perceiver, cross-attention,
  input embedding), loadable with `model.load_state_dict(torch.load(path), strict=False)`;
* the optimizer: `optimizer.pt` (under FSDP whole tensors keyed by parameter name), or
  DeepSpeed's (ZeRO-sharded) files under `deepspeed/`;
* `scheduler.pt`, `trainer_state.json` (step, epoch, position in the epoch, counters);
* per rank: `rng_rank<r>.pt` (Python, NumPy, torch and CUDA generators) and
  `loaders_rank<r>.json` (the data-loader states).

It is written under `.checkpoint-<step>.incomplete` and renamed once every rank has finished, and
`<run>/latest` is replaced atomically afterwards: a crash in the middle of a save never leaves a
broken "latest" (the half-written folder is removed by the next save).
"""

import contextlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from open_flamingo.src.checkpoint import load_checkpoint, trainable_state_dict

from .fsdp import full_optimizer_state, full_released_weights, load_full_state, uses_fsdp

logger = logging.getLogger(__name__)

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint folder
_NAME = re.compile(r"^checkpoint-(\d+)$")


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


def resolve_resume(spec: str, run_dir: Path) -> Path | None:
    """`--resume_from_checkpoint`: a checkpoint folder, or "latest" (None if the run has none)."""
    if spec != LATEST:
        path = Path(spec)
        if not is_complete(path):
            raise FileNotFoundError(f"{path} is not a complete checkpoint folder")
        return path
    pointer = run_dir / LATEST
    if pointer.is_file():
        path = run_dir / pointer.read_text().strip()
        if is_complete(path):
            return path
    steps = checkpoint_steps(run_dir)
    return run_dir / f"checkpoint-{steps[-1]}" if steps else None


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap_optimizer(optimizer):
    """torch's optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def released_weights(accelerator, model) -> dict[str, torch.Tensor]:
    """`checkpoint.pt`'s tensors (`trainable_state_dict`), complete and on the CPU, on the main
    process (other ranks get an empty dict). All ranks must call it.

    ZeRO-3 partitions every parameter across ranks: only the released ones are gathered here
    (accelerate's `get_state_dict` would gather the whole model, and refuses unless the config
    asks for 16-bit model saves). Below stage 3 the gathering is a no-op. FSDP: `fsdp.py`.
    """
    unwrapped = accelerator.unwrap_model(model)
    if uses_fsdp(accelerator):
        return full_released_weights(unwrapped, accelerator.is_main_process)
    gather = contextlib.nullcontext()
    if accelerator.distributed_type.name == "DEEPSPEED":
        import deepspeed

        names = set(trainable_state_dict(unwrapped))
        params = [p for n, p in unwrapped.named_parameters() if n in names]
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        if not accelerator.is_main_process:
            return {}
        return {k: v.detach().cpu().clone() for k, v in trainable_state_dict(unwrapped).items()}


def save_checkpoint(
    accelerator, model, optimizer, scheduler, loaders: dict, trainer_state: dict, run_dir: Path
) -> Path:
    """Write a checkpoint of this step (all ranks call this). Returns its folder."""
    step = trainer_state["step"]
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.incomplete"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        for stale in run_dir.glob(".checkpoint-*.incomplete"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()

    deepspeed = accelerator.distributed_type.name == "DEEPSPEED"
    if deepspeed:
        model.save_checkpoint(str(tmp / "deepspeed"), tag="state", exclude_frozen_parameters=True)
    weights = released_weights(accelerator, model)
    if uses_fsdp(accelerator):  # whole tensors, by parameter name (fsdp.py)
        optimizer_state = full_optimizer_state(model, _unwrap_optimizer(optimizer))
    elif not deepspeed:
        optimizer_state = optimizer.state_dict()
    if accelerator.is_main_process:
        torch.save(weights, tmp / "checkpoint.pt")
        if not deepspeed:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    (tmp / f"loaders_rank{rank}.json").write_text(
        json.dumps({name: loader.state_dict() for name, loader in loaders.items()})
    )
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        if final.exists():  # a checkpoint of this step from an earlier, interrupted attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(run_dir / LATEST, final.name)
    accelerator.wait_for_everyone()
    return final


def load_training_checkpoint(
    accelerator, model, optimizer, scheduler, loaders: dict, path: Path
) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the trainer state."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type.name == "DEEPSPEED":
        model.load_checkpoint(
            str(path / "deepspeed"),
            tag="state",
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
    elif uses_fsdp(accelerator):
        load_full_state(
            model,
            _unwrap_optimizer(optimizer),
            torch.load(path / "checkpoint.pt", map_location="cpu"),
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False),
        )
    else:
        load_checkpoint(unwrapped, path / "checkpoint.pt")
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rank = accelerator.process_index
    rng_file = path / f"rng_rank{rank}.pt"
    loaders_file = path / f"loaders_rank{rank}.json"
    if not rng_file.is_file() or not loaders_file.is_file():
        raise FileNotFoundError(
            f"{path} has no state for rank {rank}: resume with the same number of processes "
            "that wrote it."
        )
    _set_rng_state(torch.load(rng_file, weights_only=False))
    for name, state in json.loads(loaders_file.read_text()).items():
        loaders[name].load_state_dict(state)
    return json.loads((path / TRAINER_STATE).read_text())


def delete_previous_checkpoints(run_dir: Path, keep_step: int, special_steps: list[int]) -> None:
    """Remove complete checkpoints older than `keep_step`, except the special ones."""
    for step in checkpoint_steps(run_dir):
        if step < keep_step and step not in special_steps:
            shutil.rmtree(run_dir / f"checkpoint-{step}", ignore_errors=True)

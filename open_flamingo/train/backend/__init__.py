"""The training backend of a run: one object, chosen once from accelerate's state, that owns
everything one process, DDP, DeepSpeed ZeRO and FSDP2 do differently.

* `base.py`: the interface, with one process's behaviour;
* `data_parallel.py`: DDP (the step's first forward defers the gradient reduction);
* `deepspeed_zero.py`: DeepSpeed ZeRO (the engine reduces, clips, steps and saves itself);
* `fsdp2.py`: FSDP2 (sharded DTensor parameters, gradients and checkpoint tensors).

docs/architecture.md tables each difference. The trainer (`train_omnicorpus.py`, `loop.py`,
`step.py`, `checkpointing.py`) calls the backend and branches on none of them.
"""

from .base import TrainingBackend, keep_embedding_rows
from .data_parallel import DataParallelBackend
from .deepspeed_zero import DeepSpeedBackend
from .fsdp2 import FSDP2Backend

# accelerate's distributed_type.name -> the backend of a run launched with it
_BACKENDS = {
    "NO": TrainingBackend,
    "MULTI_CPU": DataParallelBackend,
    "MULTI_GPU": DataParallelBackend,
    "DEEPSPEED": DeepSpeedBackend,
    "FSDP": FSDP2Backend,
}


def choose_backend(accelerator) -> TrainingBackend:
    """The backend for the engine `accelerator` was set up with (by the launch config)."""
    kind = accelerator.distributed_type.name
    if kind not in _BACKENDS:
        raise SystemExit(
            f"accelerate set up its {kind} backend, which this trainer does not support: "
            "launch with one of accelerate_configs/ (one process, DDP, DeepSpeed ZeRO, FSDP2)."
        )
    return _BACKENDS[kind](accelerator)


__all__ = [
    "DataParallelBackend",
    "DeepSpeedBackend",
    "FSDP2Backend",
    "TrainingBackend",
    "choose_backend",
    "keep_embedding_rows",
]

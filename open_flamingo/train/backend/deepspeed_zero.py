"""DeepSpeed ZeRO (stages 1 to 3, optimizer offload) behind accelerate.

The engine owns the gradients: inside `accelerator.backward` it reduces them into its own
partitioned buffers, clips them (`gradient_clipping`, set in distributed.py) and steps. Hence:

* the input-embedding row mask is the gradient hook of the base backend: the engine never hands
  back the reduced gradient before its step;
* the trainer does not clip, and reads no gradient norm;
* the optimizer state is the engine's own (ZeRO-sharded) files under `deepspeed/`, written
  through `checkpoint_io.save_file` and read back by the engine; `checkpoint.pt` holds the
  released weights gathered from ZeRO-3's partitions.
"""

from pathlib import Path

import torch

from open_flamingo.src.checkpoint import trainable_state_dict

from ..checkpoint_io import CheckpointWriteError, save_file, write_error
from .base import TrainingBackend

ENGINE_FOLDER = "deepspeed"  # the engine's files inside a checkpoint folder
ENGINE_TAG = "state"  # the engine's name for its checkpoint, a folder under ENGINE_FOLDER


class DeepSpeedBackend(TrainingBackend):
    one_weight_dtype = True  # DeepSpeed casts the whole model to its own precision

    @property
    def name(self) -> str:
        plugin = self.accelerator.state.deepspeed_plugin
        offload = ", optimizer on the CPU" if self.optimizer_offloaded else ""
        return f"DeepSpeed ZeRO-{plugin.zero_stage}{offload}"

    @property
    def optimizer_offloaded(self) -> bool:
        """The *_slurm and offload configs step the optimizer in DeepSpeed's CPU Adam."""
        return self.accelerator.state.deepspeed_plugin.offload_optimizer_device == "cpu"

    def clip_gradients(self, parameters: list, max_norm: float) -> None:
        return None  # the engine clips inside its step

    def released_weights(self, model) -> dict[str, torch.Tensor]:
        """ZeRO-3 partitions every parameter across ranks: only the released ones are gathered
        (accelerate's `get_state_dict` would gather the whole model, and refuses unless the
        config asks for 16-bit model saves). Below stage 3 the gathering does nothing."""
        import deepspeed

        unwrapped = self.accelerator.unwrap_model(model)
        names = set(trainable_state_dict(unwrapped))
        params = [p for n, p in unwrapped.named_parameters() if n in names]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return super().released_weights(model)

    def optimizer_files(self, model, optimizer) -> dict:
        return {}  # in the engine's files

    def write_engine_files(self, model, folder: Path) -> CheckpointWriteError | None:
        """DeepSpeed's own files under `folder/deepspeed`, each written through `save_file`
        (flushed, fsynced). A write that fails is returned, not raised: DeepSpeed's barriers
        must still be reached by every rank."""
        engine = model
        errors: list[CheckpointWriteError] = []

        def save(state_dict, path):
            if not errors:
                try:
                    save_file(state_dict, Path(path))
                except CheckpointWriteError as error:
                    errors.append(error)

        def copy_recovery_script(save_path):
            try:
                type(engine)._copy_recovery_script(engine, save_path)
            except OSError as error:
                errors.append(write_error(error, Path(save_path) / "zero_to_fp32.py"))

        # Instance attributes shadow the engine's methods for this one save.
        engine.checkpoint_engine.save = save
        engine._copy_recovery_script = copy_recovery_script
        try:
            engine.save_checkpoint(
                str(folder / ENGINE_FOLDER),
                tag=ENGINE_TAG,
                exclude_frozen_parameters=True,
                save_latest=False,
            )
        finally:
            del engine.checkpoint_engine.save, engine._copy_recovery_script
        return errors[0] if errors else None

    def load_state(self, model, optimizer, folder: Path) -> None:
        """The engine restores the weights and the optimizer from its own files, with pickle:
        `validate_checkpoint` has checked first that each of them loads weights-only."""
        model.load_checkpoint(
            str(folder / ENGINE_FOLDER),
            tag=ENGINE_TAG,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )

"""OpenFlamingo on current torch / transformers 5.x, with OmniCorpus-style pre-training.

The model API is imported on first use, so `open_flamingo.data` and other submodules load
without transformers / open_clip.
"""

import importlib

_EXPORTS = {
    "CheckpointMismatchError": ".src.checkpoint_fit",
    "Flamingo": ".src.flamingo",
    "create_model_and_transforms": ".src.factory",
    "load_checkpoint": ".src.checkpoint",
    "load_model_and_transforms": ".src.flamingo_folder",
    "trainable_state_dict": ".src.checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

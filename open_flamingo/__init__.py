"""OpenFlamingo on current torch / transformers 5.x, with OmniCorpus-style pre-training."""

from .src.checkpoint import load_checkpoint, trainable_state_dict
from .src.factory import create_model_and_transforms
from .src.flamingo import Flamingo

__all__ = ["Flamingo", "create_model_and_transforms", "load_checkpoint", "trainable_state_dict"]

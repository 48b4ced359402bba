"""Training: `train_omnicorpus.py` (entry point), flags, loop, checkpoints, logging."""

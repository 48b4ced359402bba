"""The model: single-device code, no accelerate / DeepSpeed / FSDP imports."""

"""Reading a Hugging Face model's weights from its files, without its code.

A model folder (or hub id) holds its weights in one of the layouts `save_pretrained` writes,
tried in transformers' order: `model.safetensors`, `model.safetensors.index.json` (shards named
by its `weight_map`), `pytorch_model.bin`, `pytorch_model.bin.index.json`. `.bin` files are read
with `torch.load(weights_only=True)`: tensors only, no pickled code is run.
"""

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.utils.hub import cached_file

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def weight_files(path: str, hub_kwargs: dict) -> list[str]:
    """Local paths of the weight files of `path` (a folder or hub id; hub_kwargs as
    `cached_file` takes them), shards in name order. FileNotFoundError if there are none."""
    for name in WEIGHT_FILES:
        found = cached_file(path, name, **hub_kwargs, _raise_exceptions_for_missing_entries=False)
        if found is None:
            continue
        if not name.endswith(".index.json"):
            return [found]
        shards = sorted(set(json.loads(Path(found).read_text())["weight_map"].values()))
        return [cached_file(path, shard, **hub_kwargs) for shard in shards]
    raise FileNotFoundError(
        f"{path} holds no model weights: none of {', '.join(WEIGHT_FILES)} was found."
    )


def read_weights(path: str, hub_kwargs: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of every weight of `path`, on the CPU in the dtype it was saved in, one
    file at a time."""
    for file in weight_files(path, hub_kwargs):
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle, no dict)
                    yield key, handle.get_tensor(key)
        else:
            # memory-mapped where the format allows: a shard is not held twice in memory
            yield from torch.load(
                file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)
            ).items()

"""Decoding with a static KV cache, ready for CUDA graphs.

Eager decoding pays Python and kernel-launch time for every module at every new token, while a
step's GPU work at few-shot shapes is small. A CUDA graph replays a whole step with one launch,
but only if every step has the same shapes and reads and writes the same addresses:

* the KV cache: transformers' static cache (`generate(..., cache_implementation="static")`)
  keeps max-length buffers, marked as fixed addresses;
* beam search: transformers reorders a cache's beams into *new* tensors, which would move the
  static buffers at every step. `reorder_cache_in_place` keeps them in place (installed on the
  LM by `Flamingo`);
* the media conditioning: the cross-attention keys and values of the images are computed once
  per `generate` call, and the step locates `<image>` tokens without a host sync, counting
  images in a buffer kept at a fixed address (flamingo_lm.MediaConditioning).

`compile_for_decoding` compiles the LM's decoding step with that in place. Tokens equal eager
decoding's (tests/test_flamingo.py); whether it pays on a GPU is measured by
scripts/benchmark_generate.py (docs/benchmarks.md).
"""

import torch
from torch import nn
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

from .flamingo_lm import CACHE_KWARGS


def reorder_cache_in_place(cache, beam_idx: torch.Tensor):
    """Beam search's cache reordering, with static layers permuted within their own buffers.

    cache: a transformers Cache (a list of layers); beam_idx: (B * beams,) the row each row
    continues. Returns the cache (transformers' `_reorder_cache` contract).
    """
    for layer in cache.layers:
        if type(layer) in (StaticLayer, StaticSlidingWindowLayer) and layer.is_initialized:
            index = beam_idx.to(layer.keys.device)
            layer.keys.copy_(layer.keys.index_select(0, index))  # (B*beams, h, slots, d)
            layer.values.copy_(layer.values.index_select(0, index))
        else:
            layer.reorder_cache(beam_idx)
    return cache


def compile_for_decoding(lang_encoder: nn.Module, **compile_kwargs) -> None:
    """Compile the decoding steps of `lang_encoder` (in place) for `generate` with a static cache.

    Every one-token call with a static cache (`generate(..., cache_implementation="static")` or
    a `StaticCache` passed as `cache`), beam search included, then runs one compiled graph. The
    prompt stays eager, as transformers does it: there the static cache allocates its buffers
    and marks them as fixed addresses, which it cannot do inside a compiled region. Pass the
    same `StaticCache` to every call, `reset()` in between, to keep those addresses from call to
    call: a CUDA graph is re-recorded whenever they move. compile_kwargs go to torch.compile,
    by default `mode="reduce-overhead"` (CUDA graphs) and `fullgraph=True`.
    """
    compile_kwargs = {"mode": "reduce-overhead", "fullgraph": True, **compile_kwargs}
    eager_forward = lang_encoder.forward
    decoding_step = torch.compile(eager_forward, **compile_kwargs)

    def forward(*args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = next((kwargs[name] for name in CACHE_KWARGS if kwargs.get(name) is not None), None)
        if getattr(cache, "is_compileable", False) and input_ids.shape[1] == 1:
            return decoding_step(*args, **kwargs)
        return eager_forward(*args, **kwargs)

    lang_encoder.forward = forward
    # transformers would otherwise compile its own call around this one for greedy decoding
    lang_encoder.generation_config.disable_compile = True

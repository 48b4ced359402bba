"""Decoding with a static KV cache, ready for CUDA graphs.

Eager decoding pays Python and kernel-launch time for every module at every new token, which at
OF-3B shapes is most of a decoding step. A CUDA graph replays a whole step with one launch, but
only if every step has the same shapes and reads and writes the same addresses:

* the KV cache: transformers' static cache (`generate(..., cache_implementation="static")`)
  keeps max-length buffers, marked as fixed addresses;
* beam search: transformers reorders a cache's beams into *new* tensors, which would move the
  static buffers at every step. `reorder_cache_in_place` keeps them in place (installed on the
  LM by `Flamingo`);
* the media conditioning: the cross-attention keys and values of the images are computed once
  per `generate` call, and the step locates `<image>` tokens without a host sync
  (flamingo_lm.MediaConditioning).

`compile_for_decoding` compiles the LM's forward with that in place. Tokens equal eager
decoding's (tests/test_flamingo.py); whether it pays on a GPU is measured by
scripts/benchmark_generate.py (docs/benchmarks.md).
"""

import torch
from torch import nn
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer


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
    """Compile `lang_encoder.forward` (in place) for `generate` with a static cache.

    Then every LM call of `generate(..., cache_implementation="static")`, beam search
    included, runs one compiled graph: one for the prompt, one for all decoding steps (the
    forward pre-hook that locates media stays eager). compile_kwargs go to torch.compile,
    by default `mode="reduce-overhead"` (CUDA graphs) and `fullgraph=True`.
    """
    compile_kwargs = {"mode": "reduce-overhead", "fullgraph": True, **compile_kwargs}
    lang_encoder.forward = torch.compile(lang_encoder.forward, **compile_kwargs)
    # transformers would otherwise compile the whole call a second time for greedy decoding
    lang_encoder.generation_config.disable_compile = True

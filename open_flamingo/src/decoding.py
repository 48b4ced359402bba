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
  per `generate` call (media.MediaSession), at the prompt; a step only updates each row's image
  count, in place, in a buffer kept at a fixed address (media.ImageCountBuffer).

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
    a `StaticCache` passed as `cache`), beam search included, then runs its decoder (the LM's
    base model: embeddings, layers, final norm) as one compiled graph; the output head runs
    eagerly after it. Every other call, the prompt included, stays eager, as transformers does
    it: there the static cache allocates its buffers and marks them as fixed addresses, which
    it cannot do inside a compiled region. Pass the same `StaticCache` to every call, `reset()`
    in between, to keep those addresses from call to call: a CUDA graph is re-recorded whenever
    they move. compile_kwargs go to torch.compile, by default `mode="reduce-overhead"` (CUDA
    graphs) and `fullgraph=True`.

    The base model is compiled with `nn.Module.compile` (its methods stay its class's); a
    `DecodingStepsOnly` pair of forward hooks on the LM runs every other call with
    torch.compile off.
    """
    compile_kwargs = {"mode": "reduce-overhead", "fullgraph": True, **compile_kwargs}
    lang_encoder.base_model.compile(**compile_kwargs)
    gate = DecodingStepsOnly()
    lang_encoder.register_forward_pre_hook(gate.enter_lm_call, with_kwargs=True)
    lang_encoder.register_forward_hook(gate.exit_lm_call, always_call=True)
    # transformers would otherwise compile its own call around this one for greedy decoding
    lang_encoder.generation_config.disable_compile = True


def is_decoding_step(args: tuple, kwargs: dict) -> bool:
    """Whether an LM call (its arguments) is a one-token step on a static cache."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    cache = next((kwargs[name] for name in CACHE_KWARGS if kwargs.get(name) is not None), None)
    return (
        getattr(cache, "is_compileable", False)
        and input_ids is not None
        and input_ids.shape[1] == 1
    )


class DecodingStepsOnly:
    """Forward hooks on an LM whose base model is compiled: every call that is not a decoding
    step (`is_decoding_step`) runs under `torch.compiler.set_stance("force_eager")`, restored
    when the call returns or raises."""

    def __init__(self):
        self._eager = None  # the stance set for the current call, if any

    def enter_lm_call(self, lang_encoder: nn.Module, args: tuple, kwargs: dict) -> None:
        if not torch.compiler.is_compiling() and not is_decoding_step(args, kwargs):
            self._eager = torch.compiler.set_stance("force_eager")

    def exit_lm_call(self, lang_encoder: nn.Module, args: tuple, output) -> None:
        if self._eager is not None:
            self._eager.__exit__(None, None, None)
            self._eager = None

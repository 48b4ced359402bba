"""What only a CUDA GPU can check: CUDA graphs in compiled decoding, and GPU memory reporting.

Skipped without a GPU (CI has none); scripts/gpu_benchmarks.sh runs this file on the lent GPU
machine. The bf16 numerics on CUDA are in tests/test_training_precision.py.
"""

import torch
from test_flamingo import images, left_padded, open_model

from conftest import needs_cuda
from open_flamingo.src.decoding import compile_for_decoding
from open_flamingo.train.metrics import peak_memory_gib

pytestmark = needs_cuda


def test_peak_memory_counts_this_process_cuda_tensors():
    device = torch.device("cuda")
    before = peak_memory_gib(device)
    block = torch.empty(2**28, dtype=torch.uint8, device=device)  # 0.25 GiB
    assert peak_memory_gib(device) >= before + 0.25
    del block


def test_compiled_decoding_replays_cuda_graphs_and_gives_the_eager_tokens(make_flamingo):
    """The one-token step compiled with mode="reduce-overhead" runs as CUDA graphs (inductor
    counts every reason it falls back to plain kernels) and decodes the eager tokens, for the
    OF-3B LM family (MPT) at beam 3 on a left-padded batch, over two `generate` calls."""
    from torch._dynamo.utils import counters

    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    model.cuda()
    batch = left_padded(tokenizer).to("cuda")
    vision = images(2, 2).cuda()
    settings = dict(num_beams=3, min_new_tokens=8, max_new_tokens=8)

    def generate(**extra):
        return model.generate(vision, batch.input_ids, batch.attention_mask, **settings, **extra)

    eager = generate()
    assert torch.equal(generate(cache_implementation="static"), eager)
    torch._dynamo.reset()
    counters.clear()
    compile_for_decoding(model.lang_encoder)
    for _ in range(2):
        assert torch.equal(generate(cache_implementation="static"), eager)
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["inductor"]["cudagraph_skips"] == 0

"""What only a CUDA GPU can check: CUDA graphs in compiled decoding, GPU memory reporting, and
a `device_map` that puts the model on the GPU.

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


def test_device_map_auto_puts_every_part_on_the_gpu(tiny_lm_dirs, byte_tokenizer_dir):
    """device_map="auto" on a GPU machine: the LM on the GPU, and the vision encoder, perceiver
    and blocks beside it, so a forward with inputs on the GPU runs and gives the CPU logits."""
    from tiny_models import build_flamingo, randomize_gates

    cpu, _, tokenizer = build_flamingo(tiny_lm_dirs["llama"], byte_tokenizer_dir)
    placed, _, _ = build_flamingo(tiny_lm_dirs["llama"], byte_tokenizer_dir, device_map="auto")
    randomize_gates(cpu)
    placed.load_state_dict(cpu.state_dict())
    assert {p.device.type for p in placed.parameters()} == {"cuda"}
    batch = left_padded(tokenizer)
    vision = images(2, 2)
    with torch.no_grad():
        expected = cpu(vision, batch.input_ids, attention_mask=batch.attention_mask).logits
        got = placed(
            vision.cuda(), batch.input_ids.cuda(), attention_mask=batch.attention_mask.cuda()
        ).logits
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)

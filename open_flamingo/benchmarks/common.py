"""What our benchmarks and upstream's share: inputs, profiles and digests, from torch alone.

Both our benchmarks (train_step.py, generation.py) and upstream's (scripts/benchmark_upstream.py)
take their batches and prompts from here: identical inputs, side by side. The upstream benchmark
runs on open-flamingo 2.0.1 and transformers 4.46, where `open_flamingo` is upstream's package,
so it loads this file by its path: import nothing here but torch and the standard library.
"""

import hashlib
import time
from pathlib import Path

import torch

# OF-3B shapes (../shared/notes/performance.md): the MPT-1B LM of OpenFlamingo-3B
# (anas-awadalla/mpt-1b-redpajama-200b) as HF MptConfig keyword arguments.
MPT_1B = dict(
    d_model=2048,
    n_heads=16,
    n_layers=24,
    expansion_ratio=4,
    max_seq_len=2048,
    vocab_size=50432,
    no_bias=True,
)
TINY_MPT = dict(
    d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=256, vocab_size=50432
)

CAPTIONS = [
    "A man in a wetsuit riding a wave on top of a surfboard in the ocean.",
    "Two dogs playing with a red frisbee on a grassy field.",
    "A kitchen with white cabinets, a stove and a window.",
    "A plate of food with broccoli, rice and grilled chicken.",
]


def synthetic_batch(
    tokenizer, batch: int, tokens: int, images: int, image_size: int, seed: int
) -> dict:
    """A full-length batch: `images` `<image>` tokens per row, evenly spaced, each chunk closed
    by `<|endofchunk|>`, random text between; labels mask `<image>` as training does.
    images: (batch, images, 1, 3, image_size, image_size); the rest (batch, tokens)."""
    generator = torch.Generator().manual_seed(seed)
    media = tokenizer.convert_tokens_to_ids("<image>")
    eoc = tokenizer.convert_tokens_to_ids("<|endofchunk|>")
    real_vocab = min(tokenizer.vocab_size, media, eoc)
    input_ids = torch.randint(0, real_vocab, (batch, tokens), generator=generator)
    chunk = tokens // images
    for i in range(images):
        input_ids[:, i * chunk] = media
        input_ids[:, (i + 1) * chunk - 1] = eoc
    labels = input_ids.masked_fill(input_ids == media, -100)
    return {
        "images": torch.randn(batch, images, 1, 3, image_size, image_size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
    }


def step_batches(
    tokenizer, image_size: int, laion: tuple[int, int], interleaved: tuple[int, int, int]
) -> tuple[dict, dict]:
    """The training step's (LAION, interleaved) batches: `laion` is (batch, tokens), one image
    per pair; `interleaved` is (batch, tokens, images per document)."""
    return (
        synthetic_batch(tokenizer, *laion, 1, image_size, seed=0),
        synthetic_batch(tokenizer, *interleaved, image_size, seed=1),
    )


def few_shot_prompt(tokenizer, shots: int) -> torch.Tensor:
    """(L,) ids of the captioning prompt with `shots` demonstrations."""
    demos = "".join(f"<image>Output:{c}<|endofchunk|>" for c in CAPTIONS[:shots])
    return tokenizer(demos + "<image>Output:", return_tensors="pt").input_ids[0]


def few_shot_images(batch: int, shots: int, image_size: int) -> torch.Tensor:
    """(batch, shots + 1, 1, 3, image_size, image_size) float32 images of the prompt."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, shots + 1, 1, 3, image_size, image_size, generator=generator)


def generation_settings(new_tokens: int, num_beams: int, pad_token_id: int) -> dict:
    """The `generate` keywords of the captioning benchmark: exactly `new_tokens` new tokens
    (`<|endofchunk|>` cannot stop it early), beams scored as the captioning eval does."""
    settings = {
        "num_beams": num_beams,
        "do_sample": False,
        "min_new_tokens": new_tokens,
        "max_new_tokens": new_tokens,
        "pad_token_id": pad_token_id,
    }
    if num_beams > 1:
        settings["length_penalty"] = 0.0  # the captioning eval's setting
    return settings


def timed(fn, repeats: int, warmup: int, cuda: bool) -> tuple[list[float], list]:
    """Call `fn` `warmup` + `repeats` times, CUDA-synchronised around each call on a GPU.
    Returns the seconds of the last `repeats` calls and every call's result."""
    times, results = [], []
    for i in range(warmup + repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        results.append(fn())
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, results


def digest(*tensors: torch.Tensor) -> str:
    """A short hash of the tensors' bytes: equal inputs (or outputs) print equal digests."""
    sha = hashlib.sha1()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:12]


def write_profile(fn, path: Path, cuda: bool, rows: int = 30) -> None:
    """Run `fn()` once under torch.profiler; write its top operators and kernels, by device
    time on CUDA (by CPU time otherwise), as a text table to `path`."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    sort_by = "cuda_time_total" if cuda else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort_by, row_limit=rows) + "\n")

"""Benchmark few-shot captioning generation at OF-3B shapes: queries per second.

The workload of ../shared/notes/performance.md: a batch of 8 queries, each a 4-shot captioning
prompt (`<image>Output:{caption}<|endofchunk|>` x 4 + `<image>Output:`, 79 tokens with the GPT-NeoX
tokenizer) with its 5 images, exactly 20 new tokens, beam 3 and greedy, the model in bfloat16.
`Flamingo.generate` encodes the 5 x 8 images once per batch, then decodes with the KV cache.
The model is scripts/benchmark_train.py's (random init, same shapes).

Prints one JSON line per decoding setting: seconds per batch (median / min / max over `--batches`
after `--warmup`), queries/s, and a digest of the generated ids (settings that decode alike print
the same digest). Method: docs/benchmarks.md.

    python scripts/benchmark_generate.py                # beam 3 and greedy, dynamic KV cache
    python scripts/benchmark_generate.py --static_cache # transformers' static KV cache
    python scripts/benchmark_generate.py --compile      # static cache + compiled LM (CUDA graphs)
"""

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import open_clip
import torch
from benchmark_train import GPT_NEOX_TOKENIZER, build_model, check_cross_attention, write_profile
from transformers import StaticCache

from open_flamingo.src.decoding import compile_for_decoding
from open_flamingo.src.factory import load_flamingo_tokenizer

CAPTIONS = [
    "A man in a wetsuit riding a wave on top of a surfboard in the ocean.",
    "Two dogs playing with a red frisbee on a grassy field.",
    "A kitchen with white cabinets, a stove and a window.",
    "A plate of food with broccoli, rice and grilled chicken.",
]


def few_shot_prompt(tokenizer, shots: int) -> torch.Tensor:
    """(L,) ids of the captioning prompt with `shots` demonstrations."""
    demos = "".join(f"<image>Output:{c}<|endofchunk|>" for c in CAPTIONS[:shots])
    return tokenizer(demos + "<image>Output:", return_tensors="pt").input_ids[0]


def timed_generate(model, vision_x, input_ids, args, num_beams: int, device) -> dict:
    settings = {
        "num_beams": num_beams,
        "do_sample": False,
        "min_new_tokens": args.new_tokens,  # exactly new_tokens: <|endofchunk|> cannot stop it
        "max_new_tokens": args.new_tokens,
        "pad_token_id": model.eoc_token_id,
    }
    if num_beams > 1:
        settings["length_penalty"] = 0.0  # the captioning eval's setting
    cache = None
    if args.static_cache:
        # one cache for every batch, reset in between: its buffers keep their addresses, which
        # a CUDA graph of the decoding step needs (open_flamingo/src/decoding.py)
        max_len = input_ids.shape[1] + args.new_tokens
        cache = StaticCache(config=model.lang_encoder.config, max_cache_len=max_len)
    attention_mask = torch.ones_like(input_ids)

    def one_batch() -> torch.Tensor:
        with torch.inference_mode():
            if cache is not None:
                cache.reset()  # in place (~0.5 GB of memset at OF-3B shapes, beam 3)
                settings[model._cache_kwarg] = cache
            return model.generate(vision_x, input_ids, attention_mask, **settings)

    cuda = device.type == "cuda"
    times, out = [], None
    for i in range(args.warmup + args.batches):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = one_batch()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    profile = None
    if args.profile:  # one more batch, after the timed ones
        profile = args.profile.with_name(
            f"{args.profile.stem}_beam{num_beams}{args.profile.suffix}"
        )
        write_profile(one_batch, profile, cuda)
    return {
        "num_beams": num_beams,
        "new_tokens": out.shape[1] - input_ids.shape[1],
        "batch_time_s": {"median": median, "min": min(times), "max": max(times)},
        "queries_per_s": input_ids.shape[0] / median,
        "output_digest": hashlib.sha1(out.cpu().numpy().tobytes()).hexdigest()[:12],
        "profile": None if profile is None else str(profile),
    }


def run(args) -> list[dict]:
    tokenizer = load_flamingo_tokenizer(str(args.tokenizer_path))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build_model(args, tokenizer, device).to(torch.bfloat16).eval()
    if args.compile:
        compile_for_decoding(model.lang_encoder)
    prompt = few_shot_prompt(tokenizer, args.shots)
    input_ids = prompt.expand(args.batch_size, -1).to(device)
    image_size = open_clip.get_model_config(args.vision_encoder_path)["vision_cfg"]["image_size"]
    generator = torch.Generator().manual_seed(0)
    vision_x = torch.randn(
        args.batch_size, args.shots + 1, 1, 3, image_size, image_size, generator=generator
    ).to(device, torch.bfloat16)
    common = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "lm": args.lm,
        "vision_encoder": args.vision_encoder_path,
        "batch_size": args.batch_size,
        "shots": args.shots,
        "prompt_tokens": prompt.numel(),
        "images_per_query": args.shots + 1,
        "kv_cache": "static" if args.static_cache else "dynamic",
        "compiled": args.compile,
    }
    results = []
    for beams in args.num_beams:
        result = {**common, **timed_generate(model, vision_x, input_ids, args, beams, device)}
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", choices=("mpt", "llama", "tiny-mpt"), default="mpt")
    parser.add_argument("--vision_encoder_path", default="ViT-L-14")
    parser.add_argument("--tokenizer_path", type=Path, default=GPT_NEOX_TOKENIZER)
    parser.add_argument("--cross_attn_every_n_layers", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--shots", type=int, default=4, choices=range(len(CAPTIONS) + 1))
    parser.add_argument("--new_tokens", type=int, default=20)
    parser.add_argument("--num_beams", type=int, nargs="+", default=[3, 1])
    parser.add_argument("--batches", type=int, default=10, help="timed batches (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write one more batch's top kernels per setting (FILE_beam3.txt, ...)",
    )
    parser.add_argument(
        "--static_cache",
        action="store_true",
        help="transformers' static KV cache, one for all batches (fixed shapes and addresses)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the LM for decoding, CUDA graphs on a GPU (implies --static_cache); the "
        "warm-up batches include the compilation",
    )
    args = parser.parse_args(argv)
    args.gradient_checkpointing = False
    args.static_cache = args.static_cache or args.compile
    if args.batches < 1 or args.warmup < 0 or args.new_tokens < 1:
        parser.error("--batches and --new_tokens must be >= 1, --warmup >= 0")
    if args.batch_size < 1 or min(args.num_beams) < 1:
        parser.error("--batch_size and --num_beams must be >= 1")
    if not args.tokenizer_path.is_dir():
        parser.error(
            f"no tokenizer at {args.tokenizer_path}: run `python scripts/fetch_test_assets.py` "
            "or pass --tokenizer_path"
        )
    check_cross_attention(parser, args)
    return args


def main(argv=None) -> list[dict]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

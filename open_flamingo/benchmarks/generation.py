"""Benchmark few-shot captioning generation at OF-3B shapes: queries per second.

The workload of ../shared/notes/performance.md: a batch of 8 queries, each a 4-shot captioning
prompt (`<image>Output:{caption}<|endofchunk|>` x 4 + `<image>Output:`, 79 tokens with the GPT-NeoX
tokenizer) with its 5 images, exactly 20 new tokens, beam 3 and greedy, the model in bfloat16.
`Flamingo.generate` encodes the 5 x 8 images once per batch, then decodes with the KV cache.
The model is scripts/benchmark_train.py's (train_step.py; random init, same shapes).

Prints one JSON line per decoding setting: seconds per batch (median / min / max over `--batches`
after `--warmup`), queries/s, and a digest of the generated ids (settings that decode alike print
the same digest). Method: docs/benchmarks.md.

    python scripts/benchmark_generate.py                # beam 3 and greedy, dynamic KV cache
    python scripts/benchmark_generate.py --static_cache # transformers' static KV cache
    python scripts/benchmark_generate.py --compile      # static cache + compiled LM (CUDA graphs)
"""

import argparse
import json
import statistics
from pathlib import Path

import open_clip
import torch
from transformers import StaticCache

from open_flamingo.benchmarks.common import (
    CAPTIONS,
    digest,
    few_shot_images,
    few_shot_prompt,
    generation_settings,
    timed,
    write_profile,
)
from open_flamingo.benchmarks.train_step import LM_NAMES, build_model, check_cross_attention
from open_flamingo.src.decoding import compile_for_decoding
from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.tools.paths import GPT_NEOX_TOKENIZER


def timed_generate(model, vision_x, input_ids, args, num_beams: int, device) -> dict:
    settings = generation_settings(args.new_tokens, num_beams, model.eoc_token_id)
    cache = None
    if args.static_cache:
        # one cache for every batch, reset in between: its buffers keep their addresses, which
        # a CUDA graph of the decoding step needs (open_flamingo/src/decoding.py)
        max_len = input_ids.shape[1] + args.new_tokens
        cache = StaticCache(config=model.lang_encoder.config, max_cache_len=max_len)
    attention_mask = torch.ones_like(input_ids)

    def one_batch(**extra) -> torch.Tensor:
        with torch.inference_mode():
            if cache is not None:
                cache.reset()  # in place (~0.5 GB of memset at OF-3B shapes, beam 3)
                settings[model._cache_kwarg] = cache
            return model.generate(vision_x, input_ids, attention_mask, **settings, **extra)

    cuda = device.type == "cuda"
    times, outs = timed(one_batch, args.batches, args.warmup, cuda)
    out = outs[-1]
    median = statistics.median(times)
    profile = None
    if args.profile:  # one more batch, after the timed ones
        profile = args.profile.with_name(
            f"{args.profile.stem}_beam{num_beams}{args.profile.suffix}"
        )
        write_profile(one_batch, profile, cuda)
    result = {
        "num_beams": num_beams,
        "new_tokens": out.shape[1] - input_ids.shape[1],
        "batch_time_s": {"median": median, "min": min(times), "max": max(times)},
        "queries_per_s": input_ids.shape[0] / median,
        "output_digest": digest(out),
        "profile": None if profile is None else str(profile),
    }
    if args.compare_eager and num_beams == 1:
        result["against_eager"] = compare_with_eager(model, vision_x, input_ids, one_batch)
    return result


def compare_with_eager(model, vision_x, input_ids, one_batch) -> dict:
    """Greedy decoding of this setting against eager decoding with the dynamic cache, step by
    step: the largest logit difference, the first step whose token differs, and there the eager
    logits' margin between its top two tokens (a difference larger than that margin can flip
    the choice: a near tie, not a wrong step)."""
    scored = {"output_scores": True, "return_dict_in_generate": True}
    with torch.inference_mode():
        ours = one_batch(**scored)
        eager = model.generate(
            vision_x,
            input_ids,
            torch.ones_like(input_ids),
            **generation_settings(
                ours.sequences.shape[1] - input_ids.shape[1], 1, model.eoc_token_id
            ),
            **scored,
        )
    prompt = input_ids.shape[1]
    differ = (ours.sequences[:, prompt:] != eager.sequences[:, prompt:]).any(dim=0)  # (new,)
    first = int(differ.nonzero()[0]) if differ.any() else None
    max_diffs = []
    for step, (a, b) in enumerate(zip(ours.scores, eager.scores, strict=True)):
        if first is not None and step > first:
            break  # past a differing token the two runs continue different texts
        a, b = a.float(), b.float()
        same = a == b  # also where both are -inf (tokens that min_new_tokens forbids)
        max_diffs.append(torch.where(same, 0.0, a - b).abs().max().item())
    report = {"max_logit_diff_per_step": max_diffs, "first_differing_step": first}
    if first is not None:
        top2 = eager.scores[first].float().topk(2, dim=-1).values  # (B, 2)
        report["eager_top2_margin_there"] = (top2[:, 0] - top2[:, 1]).min().item()
    return report


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
    images = few_shot_images(args.batch_size, args.shots, image_size)
    vision_x = images.to(device, torch.bfloat16)
    common = {
        "implementation": "ours",
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
        "inputs_digest": digest(input_ids, images),
    }
    results = []
    for beams in args.num_beams:
        result = {**common, **timed_generate(model, vision_x, input_ids, args, beams, device)}
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", choices=LM_NAMES, default="mpt")
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
        "--compare_eager",
        action="store_true",
        help="greedy only: compare this setting's logits and tokens with eager decoding's",
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

"""Upstream open-flamingo 2.0.1 on the benchmarks' shapes and inputs: the side-by-side reference.

Runs on upstream's own stack (open-flamingo 2.0.1, transformers 4.46.3, open_clip 2.32), never
on this project's package, which has the same import name:

    PYTHONPATH=.cache/upstream-site python scripts/benchmark_upstream.py   # see `make upstream`

One build of upstream's OF-3B (upstream's `create_model_and_transforms`, ViT-L-14 and an
MPT-1B-dimension `MptForCausalLM`, both randomly initialised, built on the GPU) serves both
figures, so the build is paid once:

1. the training step of upstream's `train_one_epoch` at the OmniCorpus per-GPU batch, with the
   inputs of benchmark_train.py: fp32 weights under bf16 autocast (amp_bf16), the LAION loss
   x 0.2 and its backward, the interleaved loss and its backward, the embedding gradient masked
   to the `<image>` and `<|endofchunk|>` rows, gradient clipping at 1.0, AdamW with upstream's
   weight-decay groups, the scheduler step;
2. 4-shot captioning generation (benchmark_generate.py's prompt, images and settings), the
   model cast to bfloat16, beam 3 and greedy.

The LM's weights come from `from_config` where upstream's factory calls `from_pretrained` (there
is no checkpoint to read: every figure is of random weights, ours too). The step is timed as
ours is, with `torch.cuda.synchronize()` around it; one JSON line per figure, with
"implementation": "upstream".
"""

import argparse
import importlib.util
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, MptConfig, get_constant_schedule_with_warmup

import open_flamingo

REPO = Path(__file__).resolve().parents[1]
# Our benchmarks' inputs, loaded from their file: `open_flamingo` is upstream's package here.
_spec = importlib.util.spec_from_file_location(
    "bench_common", REPO / "open_flamingo" / "benchmarks" / "common.py"
)
bench_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_common)
GPT_NEOX_TOKENIZER = REPO / ".cache" / "assets" / "tokenizers" / "gpt-neox-20b"
UPSTREAM_VERSION = "2.0.1"
LM_CONFIGS = {"mpt": bench_common.MPT_1B, "tiny-mpt": bench_common.TINY_MPT}
# upstream train.py's defaults
LEARNING_RATE, WEIGHT_DECAY, WARMUP_STEPS = 1e-4, 0.1, 5000
LOSS_MULTIPLIER_LAION, MAX_GRAD_NORM = 0.2, 1.0


def check_upstream_stack() -> str:
    """The imported open_flamingo must be upstream's release, not this project's package."""
    site = Path(open_flamingo.__file__).resolve().parents[1]
    if not (site / f"open_flamingo-{UPSTREAM_VERSION}.dist-info").is_dir():
        raise SystemExit(
            f"open_flamingo was imported from {site}, which holds no open-flamingo "
            f"{UPSTREAM_VERSION}: run with PYTHONPATH=<upstream site> only (`make upstream` "
            "builds .cache/upstream-site)"
        )
    import transformers

    return f"open-flamingo {UPSTREAM_VERSION}, transformers {transformers.__version__}, " + (
        f"open_clip {open_clip.__version__}"
    )


def tokenizer_for_transformers4(folder: Path, out: Path) -> Path:
    """`folder`'s tokenizer as transformers 4.46 reads it: the same tokenizer.json, the config
    naming PreTrainedTokenizerFast (transformers 5 writes "TokenizersBackend", unknown to 4.x)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def build_upstream(args, device: torch.device, workdir: Path):
    """Upstream's OF-3B (or tiny) Flamingo and tokenizer, in float32, built on `device`."""
    tokenizer_path = tokenizer_for_transformers4(args.tokenizer_path, workdir / "tokenizer")
    lm_config = MptConfig(**LM_CONFIGS[args.lm])

    def from_config(*_, **__):
        return AutoModelForCausalLM.from_config(lm_config)

    with (
        torch.device(device),
        mock.patch.object(AutoModelForCausalLM, "from_pretrained", from_config),
    ):
        model, _, tokenizer = open_flamingo.create_model_and_transforms(
            clip_vision_encoder_path=args.vision_encoder_path,
            clip_vision_encoder_pretrained=None,
            lang_encoder_path=f"random-init {args.lm}",
            tokenizer_path=str(tokenizer_path),
            cross_attn_every_n_layers=args.cross_attn_every_n_layers,
            decoder_layers_attr_name="transformer.blocks",
        )
    return model.to(device), tokenizer


def grouped_params(model) -> list[dict]:
    """upstream train.py's AdamW groups: weight decay on the cross-attention blocks' weights
    (not their gates, norms or biases), none elsewhere."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = "gated_cross_attn" in name and not any(
            part in name for part in ("ff_gate", "attn_gate", "norm", "bias")
        )
        (decay if decays else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_step(model, tokenizer, laion: dict, interleaved: dict, device: torch.device):
    """One step of upstream's train_one_epoch (gradient accumulation 1) on these batches."""
    optimizer = torch.optim.AdamW(grouped_params(model), lr=LEARNING_RATE)
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=WARMUP_STEPS)
    kept_rows = tokenizer.convert_tokens_to_ids(["<image>", "<|endofchunk|>"])
    batches = [
        ({k: v.to(device) for k, v in laion.items()}, LOSS_MULTIPLIER_LAION),
        ({k: v.to(device) for k, v in interleaved.items()}, 1.0),
    ]
    embedding = model.lang_encoder.get_input_embeddings().weight

    def step() -> torch.Tensor:
        model.train()
        losses = []
        for batch, multiplier in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(
                    vision_x=batch["images"],
                    lang_x=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                )[0]
            (loss * multiplier).backward()
            losses.append(loss.detach() * multiplier)
        zero_mask = torch.zeros_like(embedding.grad)
        zero_mask[kept_rows] = 1
        embedding.grad = embedding.grad * zero_mask
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return sum(losses)

    return step, optimizer


def benchmark_train(args, model, tokenizer, device, common: dict) -> dict:
    image_size = open_clip.get_model_config(args.vision_encoder_path)["vision_cfg"]["image_size"]
    shapes = (
        (args.batch_size_laion, args.max_tokens_laion),
        (args.batch_size_interleaved, args.max_tokens_interleaved, args.images_per_doc),
    )
    laion, interleaved = bench_common.step_batches(tokenizer, image_size, *shapes)
    step, optimizer = make_step(model, tokenizer, laion, interleaved, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with FlopCounterMode(display=False) as counter:  # an untimed first step
        step()
    times, losses = bench_common.timed(step, args.steps, args.warmup, cuda)
    if args.profile:
        bench_common.write_profile(step, args.profile, cuda)
    optimizer.state.clear()  # ~8 GiB of Adam moments the generation below does not need
    median = statistics.median(times)
    samples = args.batch_size_laion + args.batch_size_interleaved
    tokens = (
        args.batch_size_laion * args.max_tokens_laion
        + args.batch_size_interleaved * args.max_tokens_interleaved
    )
    flops = counter.get_total_flops()
    return {
        **common,
        "figure": "train_step",
        "precision": "amp_bf16",
        "batch": {"laion": [*shapes[0], 1], "interleaved": list(shapes[1])},
        "inputs_digest": bench_common.digest(*laion.values(), *interleaved.values()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_time_s": {"median": median, "min": min(times), "max": max(times)},
        "samples_per_s": samples / median,
        "tokens_per_s": tokens / median,
        "flops_per_step": flops,
        "achieved_tflops": flops / median / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "last_loss": losses[-1].item(),
        "profile": str(args.profile) if args.profile else None,
    }


def benchmark_generate(args, model, tokenizer, device, common: dict) -> list[dict]:
    image_size = open_clip.get_model_config(args.vision_encoder_path)["vision_cfg"]["image_size"]
    model.to(torch.bfloat16).eval()
    prompt = bench_common.few_shot_prompt(tokenizer, args.shots)
    input_ids = prompt.expand(args.batch_size, -1).to(device)
    images = bench_common.few_shot_images(args.batch_size, args.shots, image_size)
    vision_x = images.to(device, torch.bfloat16)
    attention_mask = torch.ones_like(input_ids)
    results = []
    for beams in args.num_beams:
        settings = bench_common.generation_settings(args.new_tokens, beams, model.eoc_token_id)

        def one_batch(settings=settings) -> torch.Tensor:
            with torch.inference_mode():
                return model.generate(
                    vision_x, input_ids, attention_mask=attention_mask, **settings
                )

        cuda = device.type == "cuda"
        times, outs = bench_common.timed(one_batch, args.batches, args.warmup_batches, cuda)
        out = outs[-1]
        median = statistics.median(times)
        result = {
            **common,
            "figure": "generate",
            "batch_size": args.batch_size,
            "shots": args.shots,
            "prompt_tokens": prompt.numel(),
            "images_per_query": args.shots + 1,
            "inputs_digest": bench_common.digest(input_ids, images),
            "num_beams": beams,
            "new_tokens": out.shape[1] - input_ids.shape[1],
            "batch_time_s": {"median": median, "min": min(times), "max": max(times)},
            "queries_per_s": args.batch_size / median,
            "output_digest": bench_common.digest(out),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def run(args) -> list[dict]:
    stack = check_upstream_stack()
    open_clip.add_model_config(REPO / "open_flamingo" / "model_configs")  # ViT-Tiny-16 (smoke)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        model, tokenizer = build_upstream(args, device, Path(workdir))
    common = {
        "implementation": "upstream",
        "stack": stack,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "lm": args.lm,
        "vision_encoder": args.vision_encoder_path,
        "cross_attn_every_n_layers": args.cross_attn_every_n_layers,
        "build_s": time.perf_counter() - started,
    }
    results = []
    if "train" in args.figures:
        results.append(benchmark_train(args, model, tokenizer, device, common))
        print(json.dumps(results[-1]), flush=True)
    if "generate" in args.figures:
        results += benchmark_generate(args, model, tokenizer, device, common)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--figures", nargs="+", choices=("train", "generate"), default=["train", "generate"]
    )
    parser.add_argument("--lm", choices=tuple(LM_CONFIGS), default="mpt")
    parser.add_argument("--vision_encoder_path", default="ViT-L-14")
    parser.add_argument("--tokenizer_path", type=Path, default=GPT_NEOX_TOKENIZER)
    parser.add_argument("--cross_attn_every_n_layers", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cuda if available")
    train = parser.add_argument_group("training step (benchmark_train.py's flags)")
    train.add_argument("--batch_size_laion", type=int, default=16)
    train.add_argument("--max_tokens_laion", type=int, default=128)
    train.add_argument("--batch_size_interleaved", type=int, default=8)
    train.add_argument("--max_tokens_interleaved", type=int, default=1024)
    train.add_argument("--images_per_doc", type=int, default=6)
    train.add_argument("--steps", type=int, default=6, help="timed steps (median reported)")
    train.add_argument("--warmup", type=int, default=2, help="untimed steps after the counted one")
    train.add_argument("--profile", type=Path, default=None, help="one more step's top kernels")
    generate = parser.add_argument_group("generation (benchmark_generate.py's flags)")
    generate.add_argument("--batch_size", type=int, default=8)
    generate.add_argument(
        "--shots", type=int, default=4, choices=range(len(bench_common.CAPTIONS) + 1)
    )
    generate.add_argument("--new_tokens", type=int, default=20)
    generate.add_argument("--num_beams", type=int, nargs="+", default=[3, 1])
    generate.add_argument("--batches", type=int, default=10, help="timed batches (median)")
    generate.add_argument("--warmup_batches", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.tokenizer_path.is_dir():
        parser.error(
            f"no tokenizer at {args.tokenizer_path}: run `python scripts/fetch_test_assets.py` "
            "or pass --tokenizer_path"
        )
    positive = ("steps", "batch_size_laion", "batch_size_interleaved", "images_per_doc",
                "batch_size", "new_tokens", "batches")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.warmup_batches < 0 or min(args.num_beams) < 1:
        parser.error("--warmup and --warmup_batches must be >= 0, --num_beams >= 1")
    if args.max_tokens_interleaved < 2 * args.images_per_doc or args.max_tokens_laion < 2:
        parser.error("--max_tokens_* must leave room for the <image> chunks (2 tokens per image)")
    depth = LM_CONFIGS[args.lm]["n_layers"]
    if not 1 <= args.cross_attn_every_n_layers <= depth:
        parser.error(f"--cross_attn_every_n_layers must be between 1 and {depth}")
    return args


def main(argv=None) -> list[dict]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

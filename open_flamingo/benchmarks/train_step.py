"""Benchmark one OmniCorpus training step at OF-3B shapes, on the trainer's own code path.

The step is the one `train_omnicorpus.py` runs (open_flamingo/train/step.py): a LAION batch
(16 pairs x 128 tokens x 1 image, loss x 0.2) and an interleaved batch (8 documents x 1024 tokens
x 6 images), one backward, gradient clipping at 1.0 and an AdamW step, with the model cast by
`--precision` and the optimizer built exactly as in training. The model is OF-3B-shaped and
randomly initialised: open_clip ViT-L-14, an MPT-1B-dimension `MptForCausalLM` (or, with
`--lm llama`, a LLaMA of the same width, depth and parameter count), the GPT-NeoX tokenizer,
cross-attention every layer.

Prints one JSON line: step time median / min / max over `--steps` timed steps after `--warmup`,
samples/s, tokens/s, FLOPs per step, MFU and peak memory. FLOPs are the useful FLOPs of the step
(forward + backward, no recomputation), counted with FlopCounterMode on fake tensors, so they
do not depend on --compile or --gradient_checkpointing. Method: docs/benchmarks.md.

    python scripts/benchmark_train.py                      # OF-3B, amp_bf16, eager
    python scripts/benchmark_train.py --compile --gradient_checkpointing
"""

import argparse
import json
import statistics
from pathlib import Path

import open_clip
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, LlamaConfig, MptConfig

from open_flamingo.benchmarks import common
from open_flamingo.src.factory import assemble_flamingo, load_flamingo_tokenizer
from open_flamingo.src.lm_registry import get_submodule_by_path
from open_flamingo.tools.paths import GPT_NEOX_TOKENIZER
from open_flamingo.train.backend import choose_backend
from open_flamingo.train.config import OptimConfig
from open_flamingo.train.distributed import make_accelerator
from open_flamingo.train.metrics import peak_flops
from open_flamingo.train.optim import build_optimizer
from open_flamingo.train.step import TrainStep

# train_omnicorpus.py's defaults for what the step reads
MAX_GRAD_NORM = OptimConfig.max_grad_norm
# (LAION, interleaved) loss weights, in the order of step_batches
LOSS_MULTIPLIERS = (OptimConfig.loss_multiplier_laion, OptimConfig.loss_multiplier_interleaved)


LM_NAMES = ("mpt", "llama", "tiny-mpt", "tiny-llama")


def _llama(*, hidden: int, intermediate: int, layers: int, heads: int, max_len: int):
    """A tied-embedding LLaMA config with the GPT-NeoX vocabulary of MPT-1B."""
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        vocab_size=50432,
        tie_word_embeddings=True,
    )


def lm_config(name: str):
    """MPT-1B's dimensions (anas-awadalla/mpt-1b-redpajama-200b), a LLaMA of the same size, or a
    tiny MPT or LLaMA for smoke runs on CPU."""
    if name == "mpt":
        return MptConfig(**common.MPT_1B)
    if name == "llama":
        # SwiGLU with 3 * 2048 * 5504 ~= 8 * 2048^2 MLP weights, as MPT's 4x GELU MLP.
        return _llama(hidden=2048, intermediate=5504, layers=24, heads=16, max_len=2048)
    if name == "tiny-mpt":
        return MptConfig(**common.TINY_MPT)
    if name == "tiny-llama":
        return _llama(hidden=64, intermediate=128, layers=2, heads=4, max_len=256)
    raise ValueError(name)


def build_model(args, tokenizer, device: torch.device):
    """The randomly initialised Flamingo of the benchmark, in float32, built on `device`."""
    vis_dim = open_clip.get_model_config(args.vision_encoder_path)["vision_cfg"]["width"]
    with torch.device(device):
        clip_model = open_clip.create_model(args.vision_encoder_path, device=device)
        lang_encoder = AutoModelForCausalLM.from_config(lm_config(args.lm), dtype=torch.float32)
        return assemble_flamingo(
            clip_model.visual,
            vis_dim,
            lang_encoder,
            tokenizer,
            cross_attn_every_n_layers=args.cross_attn_every_n_layers,
            gradient_checkpointing=args.gradient_checkpointing,
        )


def weighted_loss(model, batches) -> torch.Tensor:
    """The step's loss of its (LAION, interleaved) batches: each loss times its multiplier."""
    return sum(
        model(b["images"], b["input_ids"], b["attention_mask"], b["labels"]).loss * multiplier
        for b, multiplier in zip(batches, LOSS_MULTIPLIERS, strict=True)
    )


def to_empty_keeping_ties(model: torch.nn.Module, device: str) -> None:
    """`model.to_empty(device=device)`, then the weights that were one Parameter (MPT's lm_head
    and input embedding) made one again: to_empty gives each module its own copy."""
    owners: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((module, name))
    model.to_empty(device=device)
    for shared in owners.values():
        first_module, first_name = shared[0]
        for module, name in shared[1:]:
            setattr(module, name, getattr(first_module, first_name))


def on_fake_tensors(model, batches, fake: FakeTensorMode, device: str) -> list[dict]:
    """Give a meta-device `model` fake weights on `device` (inside `fake`); returns fake copies
    of the batches there. Shapes and dtypes only: no memory, seconds on a CPU."""
    to_empty_keeping_ties(model, device)
    return [{k: fake.from_tensor(v.to(device)) for k, v in batch.items()} for batch in batches]


def count_flops(args, tokenizer, batches) -> int:
    """Useful FLOPs of one step: forward + backward of both losses, eager and without
    recomputation, counted on fake tensors. They live on the meta device, where attention runs
    as the matmuls FlopCounterMode counts (it has no formula for the CPU's fused kernel)."""
    model = build_model(args, tokenizer, torch.device("meta"))
    model.set_gradient_checkpointing(False)
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        fakes = on_fake_tensors(model, batches, fake, "meta")
        with FlopCounterMode(display=False) as counter:
            weighted_loss(model, fakes).backward()
    return counter.get_total_flops()


def step_batches(args, tokenizer) -> tuple[dict, dict]:
    """The step's (LAION, interleaved) batches at the flags' shapes."""
    image_size = open_clip.get_model_config(args.vision_encoder_path)["vision_cfg"]["image_size"]
    return common.step_batches(
        tokenizer,
        image_size,
        (args.batch_size_laion, args.max_tokens_laion),
        (args.batch_size_interleaved, args.max_tokens_interleaved, args.images_per_doc),
    )


def run(args) -> dict:
    tokenizer = load_flamingo_tokenizer(str(args.tokenizer_path))
    laion, interleaved = step_batches(args, tokenizer)
    flops = count_flops(args, tokenizer, (laion, interleaved))

    optim = OptimConfig(precision=args.precision)  # train_omnicorpus's defaults otherwise
    micro_batch_size = args.batch_size_interleaved + args.batch_size_laion
    accelerator = make_accelerator(optim, micro_batch_size, project_dir=".")
    backend = choose_backend(accelerator)
    torch.manual_seed(0)
    model = build_model(args, tokenizer, accelerator.device)
    backend.prepare_model(model, args.precision)
    optimizer = build_optimizer(
        model, optim.learning_rate, optim.weight_decay, device=accelerator.device
    )
    model, optimizer = backend.wrap(model, optimizer)
    if args.compile:
        flamingo = accelerator.unwrap_model(model)
        for layer in get_submodule_by_path(
            flamingo.lang_encoder, flamingo.decoder_layers_attr_name
        ):
            layer.compile()  # cross-attention block + decoder layer, one graph each
    step = TrainStep(optim, backend, model, optimizer)
    step.flops.flops = flops  # counted above; don't count again under the timer

    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, results = common.timed(lambda: step(interleaved, laion), args.steps, args.warmup, cuda)
    losses = [result.loss.item() for result in results]
    median = statistics.median(times)
    if args.profile:  # after the timed steps, so that it changes none of the figures
        common.write_profile(lambda: step(interleaved, laion), args.profile, cuda)
    samples = args.batch_size_laion + args.batch_size_interleaved
    tokens = (
        args.batch_size_laion * args.max_tokens_laion
        + args.batch_size_interleaved * args.max_tokens_interleaved
    )
    peak = peak_flops(args.peak_tflops)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "implementation": "ours",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "lm": args.lm,
        "vision_encoder": args.vision_encoder_path,
        "precision": args.precision,
        "compile": args.compile,
        "gradient_checkpointing": args.gradient_checkpointing,
        "cross_attn_every_n_layers": args.cross_attn_every_n_layers,
        "batch": {
            "laion": [args.batch_size_laion, args.max_tokens_laion, 1],
            "interleaved": [
                args.batch_size_interleaved,
                args.max_tokens_interleaved,
                args.images_per_doc,
            ],
        },
        "inputs_digest": common.digest(*laion.values(), *interleaved.values()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable,
        "step_time_s": {"median": median, "min": min(times), "max": max(times)},
        "samples_per_s": samples / median,
        "tokens_per_s": tokens / median,
        "flops_per_step": flops,
        "achieved_tflops": flops / median / 1e12,
        "mfu": None if peak is None else flops / median / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "losses": losses,
        "profile": str(args.profile) if args.profile else None,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", choices=LM_NAMES, default="mpt")
    parser.add_argument("--vision_encoder_path", default="ViT-L-14")
    parser.add_argument("--tokenizer_path", type=Path, default=GPT_NEOX_TOKENIZER)
    parser.add_argument("--batch_size_laion", type=int, default=16)
    parser.add_argument("--max_tokens_laion", type=int, default=128)
    parser.add_argument("--batch_size_interleaved", type=int, default=8)
    parser.add_argument("--max_tokens_interleaved", type=int, default=1024)
    parser.add_argument("--images_per_doc", type=int, default=6)
    parser.add_argument("--cross_attn_every_n_layers", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "amp_bf16", "bf16"), default="amp_bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the layers")
    parser.add_argument(
        "--gradient_checkpointing", nargs="?", const="full", choices=("full", "selective")
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None, help="for MFU off the H100")
    parser.add_argument(
        "--profile", type=Path, default=None, help="write one more step's top kernels here"
    )
    args = parser.parse_args(argv)
    if not args.tokenizer_path.is_dir():
        parser.error(
            f"no tokenizer at {args.tokenizer_path}: run `python scripts/fetch_test_assets.py` "
            "(it builds the GPT-NeoX tokenizer offline) or pass --tokenizer_path"
        )
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    for name in ("batch_size_laion", "batch_size_interleaved", "images_per_doc"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.max_tokens_interleaved < 2 * args.images_per_doc or args.max_tokens_laion < 2:
        parser.error(
            "--max_tokens_interleaved / --max_tokens_laion must leave room for the "
            "<image> chunks (2 tokens per image)"
        )
    check_cross_attention(parser, args)
    if args.peak_tflops is not None and not 0 < args.peak_tflops < float("inf"):
        parser.error("--peak_tflops must be a positive number")
    return args


def check_cross_attention(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--cross_attn_every_n_layers must place at least one cross-attention layer in --lm."""
    depth = lm_config(args.lm).num_hidden_layers
    if not 1 <= args.cross_attn_every_n_layers <= depth:
        parser.error(
            f"--cross_attn_every_n_layers must be between 1 and {depth} (the layers of --lm "
            f"{args.lm})"
        )


def main(argv=None) -> dict:
    result = run(parse_args(argv))
    print(json.dumps(result), flush=True)
    return result

"""Estimate the peak memory of one training step at OF-3B shapes, without a GPU.

The step of scripts/benchmark_train.py (train_step.py: same model, batches, precision policy,
optimizer and --gradient_checkpointing) runs on fake tensors: shapes and dtypes only, seconds on
a laptop.
A dispatch mode follows every tensor storage that exists during the second step (weights,
gradients, AdamW states, batches, activations kept for backward, temporaries) and reports the
largest total it reaches, and which ops made the storages alive at that moment.

This counts tensor bytes. The CUDA caching allocator's fragmentation, cuBLAS / attention
workspaces and the CUDA context come on top, so a measured `max_memory_allocated` is somewhat
higher; the estimate is for comparing configurations and for planning, and the GPU numbers in
docs/benchmarks.md are measured. Autocast follows the CPU's rules, which for matmuls, attention
and norms are those of CUDA.

    python scripts/estimate_train_memory.py                 # OF-3B, amp_bf16
    python scripts/estimate_train_memory.py --gradient_checkpointing selective
    python scripts/estimate_train_memory.py --upstream_layout   # upstream 2.0.1's memory
"""

import argparse
import json
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from open_flamingo.benchmarks.train_step import (
    MAX_GRAD_NORM,
    build_model,
    on_fake_tensors,
    parse_args,
    step_batches,
    weighted_loss,
)
from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.src.mpt_attention import use_eager_mpt_attention
from open_flamingo.train.optim import build_optimizer
from open_flamingo.train.precision import cast_for_precision, training_precision

GIB = 2**30


class StorageTracker(TorchDispatchMode):
    """Live tensor-storage bytes, by the op (and dtype) that created them; and their peak."""

    def __init__(self):
        super().__init__()
        self._seen = WeakIdKeyDictionary()
        self._op = "before the step"
        self.live: dict[tuple[str, str], int] = {}
        self.current = 0
        self.peak = 0
        self.at_peak: dict[tuple[str, str], int] = {}

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        key, nbytes = (self._op, str(tensor.dtype).removeprefix("torch.")), storage.nbytes()
        self._seen[storage] = key
        self.live[key] = self.live.get(key, 0) + nbytes
        self.current += nbytes
        if self.current > self.peak:
            self.peak, self.at_peak = self.current, dict(self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key, nbytes: int) -> None:
        self.live[key] -= nbytes
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._op = func.overloadpacket.__name__
        tree_map_only(torch.Tensor, self.add, out)
        return out


def estimate(args) -> dict:
    tokenizer = load_flamingo_tokenizer(str(args.tokenizer_path))
    batches = step_batches(args, tokenizer)
    model = build_model(args, tokenizer, torch.device("meta"))
    if args.upstream_layout:  # transformers' eager MPT attention, every weight in float32
        use_eager_mpt_attention(model.lang_encoder)
    else:
        cast_for_precision(model, args.precision)  # on meta: dtypes only
    autocast = training_precision(args.precision).autocast == torch.bfloat16
    with FakeTensorMode(allow_non_fake_inputs=True) as fake:
        fakes = on_fake_tensors(model, batches, fake, "cpu")  # the CPU's autocast and kernels
        model.train()
        optimizer = build_optimizer(model, learning_rate=1e-4, weight_decay=0.1)
        trainable = [p for p in model.parameters() if p.requires_grad]

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = weighted_loss(model, fakes)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # creates the AdamW states
        tracker = StorageTracker()
        states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        inputs = [t for b in fakes for t in b.values()]
        for tensor in [*model.parameters(), *model.buffers(), *states, *inputs]:
            tracker.add(tensor)
        static = tracker.current
        with tracker:
            step()
    top = sorted(tracker.at_peak.items(), key=lambda item: -item[1])[: args.top]
    return {
        "lm": args.lm,
        "vision_encoder": args.vision_encoder_path,
        "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "upstream_layout": args.upstream_layout,
        "static_gib": static / GIB,
        "estimated_peak_gib": tracker.peak / GIB,
        "at_peak_gib": {f"{op} ({dtype})": n / GIB for (op, dtype), n in top},
    }


def main(argv=None) -> dict:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--top", type=int, default=12, help="largest groups shown at the peak")
    extra.add_argument(
        "--upstream_layout",
        action="store_true",
        help="as upstream 2.0.1 holds the model: float32 frozen weights, eager MPT attention",
    )
    own, rest = extra.parse_known_args(argv)
    args = parse_args(rest)
    args.top, args.upstream_layout = own.top, own.upstream_layout
    result = estimate(args)
    print(json.dumps(result), flush=True)
    return result

"""Run under `accelerate launch` by tests/test_train.py: the trainer's micro-step (`TrainStep`)
with gradient accumulation, instrumented to show when gradients are reduced across processes.

    accelerate launch ... tests/grad_sync_probe.py OUT_DIR <train_omnicorpus flags>

Each process writes OUT_DIR/rank<k>.pt with, per micro-step, whether it was an accumulation
boundary and how many cross-process reductions its backward issued: DDP bucket reductions
counted by a DDP communication hook, or, under DeepSpeed, calls of the collectives of
deepspeed.comm and torch.distributed. Per optimizer step it also holds the gradient the optimizer
got, and this process's own accumulated gradient: the same micro-batches through a plain copy
of the model (same weights, no DDP / DeepSpeed), each loss divided by the accumulation steps as
`accelerator.backward` divides it. The test compares the numbers.
"""

import copy
import functools
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import set_seed

from open_flamingo.src.factory import create_model_and_transforms
from open_flamingo.train.args import parse_config
from open_flamingo.train.backend import choose_backend
from open_flamingo.train.distributed import make_accelerator
from open_flamingo.train.optim import build_optimizer
from open_flamingo.train.run import build_loaders
from open_flamingo.train.step import TrainStep

COLLECTIVES = (
    "all_reduce",
    "all_reduce_coalesced",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_fn",
    "all_gather",
    "all_gather_into_tensor",
    "allgather_fn",
    "broadcast",
    "all_to_all_single",
)


class Counter:
    """Counts calls of the collectives while `active`, by "<module>.<name>"."""

    def __init__(self):
        self.active = False
        self.calls: dict[str, int] = {}

    def wrap(self, module, name: str) -> None:
        real = getattr(module, name, None)
        if real is None:
            return

        @functools.wraps(real)
        def counted(*args, **kwargs):
            if self.active:
                key = f"{module.__name__}.{name}"
                self.calls[key] = self.calls.get(key, 0) + 1
            return real(*args, **kwargs)

        setattr(module, name, counted)

    def take(self) -> dict[str, int]:
        calls, self.calls = self.calls, {}
        return calls


def loss_of(model, batch: dict, optim) -> torch.Tensor:
    def one(b):
        return model(
            vision_x=b["images"], lang_x=b["input_ids"], attention_mask=b["attention_mask"],
            labels=b["labels"],
        ).loss  # fmt: skip

    interleaved, laion = batch
    return (
        one(interleaved) * optim.loss_multiplier_interleaved
        + one(laion) * optim.loss_multiplier_laion
    )


def main(out_dir: str, argv: list[str]) -> None:
    config = parse_config(argv)
    optim = config.optim
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(optim, config.micro_batch_size, str(out))
    set_seed(config.seed)
    model, image_processor, tokenizer = create_model_and_transforms(
        config.model.vision_encoder_path,
        config.model.vision_encoder_pretrained,
        config.model.lm_path,
        config.model.tokenizer_path,
        cross_attn_every_n_layers=config.model.cross_attn_every_n_layers,
    )
    # open gates (they start at 0, which zeroes every cross-attention and perceiver gradient)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                param.fill_(0.5)
    loaders = build_loaders(config, image_processor, tokenizer, acc)
    reference = copy.deepcopy(model)  # this process's gradients, without DDP / DeepSpeed
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = build_optimizer(model, optim.learning_rate, optim.weight_decay)
    backend = choose_backend(acc)
    model, optimizer = backend.wrap(model, optimizer)
    inner = acc.unwrap_model(model)
    deepspeed = acc.distributed_type.name == "DEEPSPEED"
    step = TrainStep(optim, backend, model, optimizer)
    counter = Counter()
    hook_calls = [0]
    received: list[dict[str, torch.Tensor]] = []  # the gradients each optimizer step got

    if deepspeed:
        import deepspeed.comm
        from deepspeed.utils import safe_get_full_grad

        for name in COLLECTIVES:
            counter.wrap(deepspeed.comm, name)
            counter.wrap(dist, name)
        engine_step = model.step

        def step_and_record():
            if model.is_gradient_accumulation_boundary():
                counter.active = False  # assembling full gradients is itself a collective
                params = dict(inner.named_parameters())
                received.append({n: safe_get_full_grad(params[n]).detach().clone() for n in names})
                counter.active = True
            engine_step()

        model.step = step_and_record
    else:

        def counting_hook(state, bucket):
            hook_calls[0] += 1
            buffer = bucket.buffer().div_(dist.get_world_size())
            work = dist.all_reduce(buffer, async_op=True)
            return work.get_future().then(lambda fut: fut.value()[0])

        model.register_comm_hook(None, counting_hook)
        optimizer_step = optimizer.optimizer.step

        def record_and_step(*a, **k):
            params = dict(inner.named_parameters())
            received.append({n: params[n].grad.detach().clone() for n in names})
            return optimizer_step(*a, **k)

        optimizer.optimizer.step = record_and_step

    backward = acc.backward

    def counted_backward(loss, **kwargs):
        counter.active = True
        try:
            return backward(loss, **kwargs)
        finally:
            counter.active = False

    acc.backward = counted_backward

    micro_steps, local, last_only, losses = [], [], [], []
    accumulated = None
    ref_params = dict(reference.named_parameters())
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    for _ in range(len(loaders["interleaved"])):
        batch = (next(iterators["interleaved"]), next(iterators["laion"]))
        reference.zero_grad(set_to_none=True)
        ref_loss = loss_of(reference, batch, optim)
        (ref_loss / optim.gradient_accumulation_steps).backward()
        grads = {n: ref_params[n].grad.detach().clone() for n in names}
        accumulated = (
            grads if accumulated is None else {n: accumulated[n] + grads[n] for n in names}
        )

        hook_calls[0] = 0
        result = step(*batch)
        micro_steps.append(
            {
                "boundary": acc.sync_gradients,
                "bucket_reductions": hook_calls[0],
                "collectives": counter.take(),
            }
        )
        losses.append((ref_loss.item(), result.loss.item()))
        if acc.sync_gradients:
            local.append(accumulated)
            last_only.append(grads)
            accumulated = None
            with torch.no_grad():  # the reference follows the optimizer step
                params = dict(inner.named_parameters())
                for n, p in reference.named_parameters():
                    p.copy_(params[n])
    torch.save(
        {
            "micro_steps": micro_steps,
            "received": received,
            "local": local,
            "last_only": last_only,
            "losses": losses,
        },
        out / f"rank{acc.process_index}.pt",
    )
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

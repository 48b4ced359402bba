"""Run under `torchrun --nproc_per_node 2` by tests/test_fsdp.py: the trainer's FSDP2 backend
(open_flamingo/train/backend/fsdp2.py) on a tiny Flamingo sharded with torch's `fully_shard`
over gloo, against a plain copy of the model.

    torchrun --nproc_per_node 2 tests/fsdp_probe.py OUT_DIR LM_DIR TOKENIZER_DIR

accelerate makes FSDP only on GPUs, so the sharding is done here as accelerate's fsdp config
does it (each decoder layer, cross-attention block and the perceiver a unit, then the root).
Both ranks train on the same batch, so the reduced gradient equals the plain copy's (whose
embedding rows are masked by the other backends' gradient hook). The trainer's
`save_checkpoint` / `load_training_checkpoint` write and resume OUT_DIR/run/checkpoint-2.
Each rank writes OUT_DIR/rank<k>.pt with what the test compares.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from open_flamingo.src.flamingo_lm import FlamingoDecoderLayer
from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler
from open_flamingo.train.backend import FSDP2Backend, keep_embedding_rows
from open_flamingo.train.backend.fsdp2 import whole
from open_flamingo.train.checkpointing import load_training_checkpoint, save_checkpoint
from open_flamingo.train.optim import build_optimizer
from tiny_models import IMAGE_SIZE, build_flamingo

TEXT = ["<image>a red square<|endofchunk|><image>two blue circles<|endofchunk|>"] * 2


class ShardedAccelerator:
    """What the FSDP2 backend and the trainer's checkpoint code read from accelerate's
    Accelerator, for a run sharded by FSDP (accelerate itself makes FSDP only on GPUs)."""

    distributed_type = DistributedType.FSDP
    device = torch.device("cpu")

    def __init__(self, rank: int):
        self.process_index = rank
        self.is_main_process = rank == 0

    def wait_for_everyone(self) -> None:
        dist.barrier()

    def unwrap_model(self, model):
        return model

    def prepare(self, model, optimizer):
        return model, optimizer  # sharded by `shard`, as accelerate's fsdp config would

    def clip_grad_norm_(self, parameters, max_norm):
        # accelerate's, for parameters that are not all the model's
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def shard(model, mesh) -> None:
    units = (FlamingoDecoderLayer, GatedCrossAttentionBlock, PerceiverResampler)
    for module in reversed(list(model.modules())):
        if isinstance(module, units):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def main(out_dir: str, lm_dir: str, tokenizer_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    def fresh():
        model, _, tokenizer = build_flamingo(Path(lm_dir), Path(tokenizer_dir), seed=0)
        with torch.no_grad():  # open the gates (at 0 they zero every Flamingo gradient)
            for name, param in model.named_parameters():
                if name.endswith(("attn_gate", "ff_gate")):
                    param.fill_(0.5)
        return model, tokenizer

    def prepared(model, rows):
        """`model` sharded by the FSDP2 backend as the trainer prepares it, and its optimizer."""
        backend = FSDP2Backend(ShardedAccelerator(rank))
        backend.prepare_model(model, "fp32", trainable_embedding_rows=rows)
        shard(model, mesh)
        model, optimizer = backend.wrap(model, build_optimizer(model, 1e-2, 0.1))
        return backend, model, optimizer

    plain, tokenizer = fresh()
    rows = [plain.media_token_id, plain.eoc_token_id]
    backend, sharded, sharded_optimizer = prepared(copy.deepcopy(plain), rows)
    keep_embedding_rows(plain, rows)
    plain_optimizer = build_optimizer(plain, 1e-2, 0.1)

    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    labels = ids.clone()
    labels[:, :3] = -100
    vision = torch.randn(
        2, 2, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3)
    )

    def backward(model) -> float:
        loss = model(vision, ids, labels=labels).loss
        loss.backward()
        return loss.item()

    def finish_gradients(backend, model) -> None:
        """The trainer's boundary: the backend masks the embedding rows, then clips (here at a
        norm no gradient reaches, which scales each gradient by exactly 1)."""
        backend.clip_gradients([p for p in model.parameters() if p.requires_grad], 1e9)

    def step(backend, model, optimizer) -> float:
        loss = backward(model)
        finish_gradients(backend, model)
        optimizer.step()
        optimizer.zero_grad()
        return loss

    report = {"grad_rel_diff": [], "losses": [], "plain_losses": []}
    for _ in range(2):  # the gradients both optimizers get, then their steps
        report["plain_losses"].append(backward(plain))  # masked by the tensor hook
        report["losses"].append(backward(sharded))
        finish_gradients(backend, sharded)
        grads = {n: whole(p.grad) for n, p in sharded.named_parameters() if p.grad is not None}
        plain_grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
        assert grads.keys() == plain_grads.keys()
        report["grad_rel_diff"].append(
            max(
                float((g - plain_grads[n]).norm() / plain_grads[n].norm()) for n, g in grads.items()
            )
        )
        embedding = grads[next(n for n in grads if "embed_tokens" in n)]  # (V, D)
        report["embedding_rows_with_grad"] = embedding.abs().sum(1).nonzero().flatten().tolist()
        for optimizer in (plain_optimizer, sharded_optimizer):
            optimizer.step()
            optimizer.zero_grad()

    # the trainer's checkpoint code, as the trainer calls it
    run_dir = Path(out_dir) / "run"
    run_dir.mkdir(exist_ok=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(sharded_optimizer, lambda step: 1.0)
    checkpoint = save_checkpoint(
        backend, sharded, sharded_optimizer, scheduler, {}, {"step": 2}, run_dir
    )
    if rank == 0:
        released = torch.load(checkpoint / "checkpoint.pt")
        plain_state = plain.state_dict()
        report["released_vs_plain"] = max(
            float((v - plain_state[k]).abs().max()) for k, v in released.items()
        )
        report["released_keys"] = sorted(released)

    # continue the run, and resume it in a fresh sharded model from what was saved
    report["step3"] = step(backend, sharded, sharded_optimizer)
    continued = {n: whole(p).detach().clone() for n, p in sharded.named_parameters()}
    resumed_backend, resumed, resumed_optimizer = prepared(fresh()[0], rows)
    resumed_scheduler = torch.optim.lr_scheduler.LambdaLR(resumed_optimizer, lambda step: 1.0)
    load_training_checkpoint(
        resumed_backend, resumed, resumed_optimizer, resumed_scheduler, {}, checkpoint
    )
    report["step3_resumed"] = step(resumed_backend, resumed, resumed_optimizer)
    after = {n: whole(p).detach() for n, p in resumed.named_parameters()}
    report["params_differing_after_resume"] = [
        n for n in continued if not torch.equal(continued[n], after[n])
    ]
    torch.save(report, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])

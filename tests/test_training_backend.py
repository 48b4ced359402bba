"""The training backend (open_flamingo/train/backend/): one object per run, chosen from
accelerate's state, owns every difference between one process, DDP, DeepSpeed and FSDP2. The
backends' training runs are in test_train.py (DDP, DeepSpeed) and test_fsdp.py (FSDP2)."""

import ast
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from conftest import REPO
from open_flamingo.train.backend import (
    DataParallelBackend,
    DeepSpeedBackend,
    FSDP2Backend,
    TrainingBackend,
    choose_backend,
)
from tiny_models import IMAGE_SIZE

PACKAGE = REPO / "open_flamingo"


def launched_with(kind: str, zero_stage: int = 2, offload: str = "none") -> SimpleNamespace:
    """What `choose_backend` reads of an Accelerator that accelerate set up as `kind`."""
    plugin = SimpleNamespace(zero_stage=zero_stage, offload_optimizer_device=offload)
    return SimpleNamespace(
        distributed_type=DistributedType[kind], state=SimpleNamespace(deepspeed_plugin=plugin)
    )


@pytest.mark.parametrize(
    "launch, backend, name",
    [
        (launched_with("NO"), TrainingBackend, "plain PyTorch"),
        (launched_with("MULTI_CPU"), DataParallelBackend, "DDP"),
        (launched_with("MULTI_GPU"), DataParallelBackend, "DDP"),
        (launched_with("DEEPSPEED", zero_stage=1), DeepSpeedBackend, "DeepSpeed ZeRO-1"),
        (
            launched_with("DEEPSPEED", zero_stage=2, offload="cpu"),
            DeepSpeedBackend,
            "DeepSpeed ZeRO-2, optimizer on the CPU",
        ),
        (launched_with("FSDP"), FSDP2Backend, "FSDP2"),
    ],
)
def test_the_backend_is_chosen_from_accelerate_s_state(launch, backend, name):
    chosen = choose_backend(launch)
    assert type(chosen) is backend
    assert chosen.name == name  # what the run's start-up line calls it


def test_a_backend_the_trainer_does_not_support_is_refused():
    with pytest.raises(SystemExit, match="its XLA backend, which this trainer does not support"):
        choose_backend(launched_with("XLA"))


def embedding_rows_with_gradient(model, tokenizer) -> list[int]:
    model.zero_grad(set_to_none=True)
    ids = tokenizer(["<image>a red square<|endofchunk|>"], return_tensors="pt").input_ids
    vision = torch.randn(
        1, 1, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)
    )
    model(vision, ids, labels=ids).loss.backward()
    grad = model.lang_encoder.get_input_embeddings().weight.grad  # (V, D)
    return grad.abs().sum(1).nonzero().flatten().tolist()


@pytest.mark.parametrize("kind", ["NO", "MULTI_CPU", "DEEPSPEED"])
def test_the_gradient_hook_keeps_only_the_trainable_embedding_rows(kind, make_flamingo):
    """One process, DDP and DeepSpeed mask the embedding's gradient with a hook, before any
    reduction (FSDP2 masks its shards instead: test_fsdp.py)."""
    model, _, tokenizer = make_flamingo("llama")
    rows = [model.media_token_id, model.eoc_token_id]
    assert len(embedding_rows_with_gradient(model, tokenizer)) > len(rows)
    choose_backend(launched_with(kind)).prepare_model(model, "fp32", trainable_embedding_rows=rows)
    assert embedding_rows_with_gradient(model, tokenizer) == sorted(rows)


def test_fsdp2_leaves_the_weight_without_a_hook_and_masks_at_the_boundary(make_flamingo):
    model, _, tokenizer = make_flamingo("llama")
    rows = [model.media_token_id, model.eoc_token_id]
    backend = choose_backend(launched_with("FSDP"))
    backend.prepare_model(model, "fp32", trainable_embedding_rows=rows)
    assert backend.embedding_rows == rows
    assert len(embedding_rows_with_gradient(model, tokenizer)) > len(rows)


def _modules(folder):
    for path in sorted(folder.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_only_the_backend_reads_accelerate_s_distributed_type():
    """The trainer branches on no backend: what differs lives in train/backend/ (and the
    Accelerator's own set-up in train/distributed.py)."""
    allowed = {PACKAGE / "train" / "distributed.py"}
    readers = []
    for path, tree in _modules(PACKAGE):
        if path in allowed or (PACKAGE / "train" / "backend") in path.parents:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "distributed_type":
                readers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert readers == []


def test_the_model_code_imports_no_distributed_engine():
    """open_flamingo/src/ is single-device code: accelerate, DeepSpeed and FSDP stay in train/."""

    def engine(module: str) -> bool:
        return module.split(".")[0] in ("accelerate", "deepspeed") or module.startswith(
            "torch.distributed.fsdp"
        )

    imports = []
    for path, tree in _modules(PACKAGE / "src"):
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            imports += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if engine(n)]
    assert imports == []

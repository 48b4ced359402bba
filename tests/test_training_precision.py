"""--precision amp_bf16 stores frozen matmul weights in bfloat16 without changing any number."""

import copy
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from test_train import argv, tiny  # noqa: F401  (tiny: the training corpus fixture)

from conftest import needs_cuda
from open_flamingo.src.precision import PRECISIONS
from open_flamingo.train import precision
from open_flamingo.train.backend import choose_backend
from open_flamingo.train.metrics import read_metrics
from open_flamingo.train.precision import (
    cast_for_precision,
    mixed_precision,
    store_frozen_matmul_weights_in_bf16,
    training_precision,
)
from open_flamingo.train.train_omnicorpus import main
from tiny_models import FAMILIES, IMAGE_SIZE, randomize_gates


def loss_and_grads(model, vision, ids, labels) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        loss = model(vision, ids, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_frozen_weights_give_bitwise_the_same_loss_and_gradients(
    family, device, make_flamingo, monkeypatch, request
):
    if device == "cuda":  # both runs take the same kernels, without atomics
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        torch.use_deterministic_algorithms(True)
        request.addfinalizer(lambda: torch.use_deterministic_algorithms(False))
    reference, _, tokenizer = make_flamingo(family)
    randomize_gates(reference)
    reference.to(device)
    lean = copy.deepcopy(reference)
    cast_for_precision(lean, "amp_bf16")
    assert torch.bfloat16 in {p.dtype for p in lean.parameters()}

    text = ["<image>a red square<|endofchunk|><image>two blue circles<|endofchunk|>"] * 2
    ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
    labels = ids.clone()
    labels[:, :3] = -100
    vision = torch.randn(
        2, 2, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3)
    ).to(device)

    loss_ref, grads_ref = loss_and_grads(reference, vision, ids, labels)
    loss_lean, grads_lean = loss_and_grads(lean, vision, ids, labels)
    assert torch.equal(loss_lean, loss_ref)
    assert grads_lean.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        assert torch.equal(grads_lean[name], grad), name


def test_one_precision_table_keeps_each_flag_s_meaning():
    """Evaluation and training read one table (open_flamingo/src/precision.py). Evaluation's
    names are upstream's; the trainer's `fp16` stays float16 autocast over float32 weights."""
    assert PRECISIONS["fp16"] == (torch.float16, None)
    assert PRECISIONS["amp"] == (torch.float32, torch.float16)
    assert PRECISIONS["amp_bfloat16"] == PRECISIONS["amp_bf16"] == (torch.float32, torch.bfloat16)
    # --precision -> (accelerate's mixed_precision, the weights' dtype), as the trainer had them
    trained = {
        "fp32": ("no", torch.float32),
        "amp_bf16": ("bf16", torch.float32),
        "amp_bfloat16": ("bf16", torch.float32),
        "bf16": ("no", torch.bfloat16),
        "fp16": ("fp16", torch.float32),
    }
    for flag, (mixed, weights) in trained.items():
        assert (mixed_precision(flag), training_precision(flag).weights) == (mixed, weights)


def test_only_frozen_linear_and_conv_weights_change_dtype(make_flamingo):
    model, _, _ = make_flamingo("mpt")
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    converted = store_frozen_matmul_weights_in_bf16(model)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    bf16 = {name for name, dtype in dtypes.items() if dtype == torch.bfloat16}
    # every trainable parameter (perceiver, cross-attention, embeddings) keeps float32
    assert all(dtypes[n] == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    # MPT's lm_head is tied to the trainable embedding: it stays float32 with it
    assert model.lang_encoder.lm_head.weight.dtype == torch.float32
    # frozen norms and the vision tower's positional / class embeddings stay float32
    assert not any(
        "norm" in n or n.endswith(("ln_pre.weight", "positional_embedding")) for n in bf16
    )
    assert "vision_encoder.conv1.weight" in bf16
    assert "lang_encoder.transformer.blocks.0.decoder_layer.attn.Wqkv.weight" in bf16
    assert converted == sum(p.numel() for n, p in model.named_parameters() if n in bf16)
    assert 0.8 * frozen < converted < frozen


@pytest.mark.parametrize("distributed_type", ["FSDP", "DEEPSPEED"])
def test_sharded_engines_keep_one_dtype(distributed_type, make_flamingo):
    backend = choose_backend(SimpleNamespace(distributed_type=DistributedType[distributed_type]))
    model, _, _ = make_flamingo("mpt")
    backend.prepare_model(model, "amp_bf16")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    backend.prepare_model(model, "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_amp_bf16_training_run_is_unchanged_by_bf16_frozen_weights(tiny, tmp_path, monkeypatch):  # noqa: F811
    """The trainer applies the policy, and its losses equal those of float32 frozen weights."""

    def run(name: str) -> list[float]:
        main(argv(tiny, tmp_path / name, precision="amp_bf16"))
        return [row["loss"] for row in read_metrics(tmp_path / name / "metrics.jsonl")]

    converted = []
    real = precision.store_frozen_matmul_weights_in_bf16
    monkeypatch.setattr(
        precision, "store_frozen_matmul_weights_in_bf16", lambda m: converted.append(real(m))
    )
    lean = run("lean")
    assert len(converted) == 1 and converted[0] > 0
    monkeypatch.setattr(precision, "store_frozen_matmul_weights_in_bf16", lambda m: 0)
    assert run("float32") == lean

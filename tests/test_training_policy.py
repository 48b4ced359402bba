"""What trains, what receives gradients, and gradient checkpointing that really recomputes."""

import pytest
import torch

from open_flamingo.src.flamingo_lm import FlamingoDecoderLayer
from tiny_models import FAMILIES, IMAGE_SIZE, randomize_gates


def training_batch(tokenizer, batch: int = 2):
    texts = ["<image>a red square<|endofchunk|><image>a blue circle<|endofchunk|>"] * batch
    enc = tokenizer(texts, return_tensors="pt")
    vision = torch.randn(
        batch, 2, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)
    )
    return vision, enc.input_ids, enc.attention_mask


def expected_trainable(model, freeze_lm_embeddings: bool) -> set[str]:
    embedding = model.lang_encoder.get_input_embeddings().weight
    names = set()
    for name, param in model.named_parameters():
        if (
            name.startswith("perceiver.")
            or name.startswith("lang_encoder.gated_cross_attn_layers.")
            or param is embedding
            and not freeze_lm_embeddings
        ):
            names.add(name)
    return names


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("freeze_lm_embeddings", [False, True])
def test_only_perceiver_cross_attention_and_embeddings_get_gradients(
    family, freeze_lm_embeddings, make_flamingo
):
    model, _, tokenizer = make_flamingo(family, freeze_lm_embeddings=freeze_lm_embeddings)
    randomize_gates(model)  # closed gates would starve everything behind them of gradient
    model.train()
    vision, ids, mask = training_batch(tokenizer)
    model(vision, ids, attention_mask=mask, labels=ids).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == expected_trainable(model, freeze_lm_embeddings)
    assert with_grad == trainable
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
    assert not any(n.startswith("vision_encoder.") for n in with_grad)


def test_trainable_parameter_count_matches_upstream_formula(make_flamingo):
    """perceiver + blocks + (vocab x width) embeddings, as counted for OF-3B in
    docs/benchmarks.md (1,046,992,944 at MPT-1B / ViT-L-14 shapes)."""
    model, _, tokenizer = make_flamingo("mpt", cross_attn_every_n_layers=2)
    d, dv, inner = 64, 64, 512
    perceiver = (
        64 * dv
        + 2 * dv
        + 6 * (4 * dv + dv * inner + dv * 2 * inner + inner * dv + 2 * dv + 2 * dv * 4 * dv)
    )
    block = 2 * d + d * inner + dv * 2 * inner + inner * d + 2 + 2 * d + 2 * d * 4 * d
    expected = perceiver + 2 * block + len(tokenizer) * d
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def saved_activation_bytes(model, vision, ids, mask) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward during one forward, and the loss."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(vision, ids, attention_mask=mask, labels=ids).loss
    return total, loss


@pytest.mark.parametrize("family", ["mpt", "llama3-gqa", "gpt_neox"])
def test_gradient_checkpointing_recomputes_and_saves_memory(family, make_flamingo):
    grads, saved, recomputed_calls = {}, {}, {}
    for checkpointing in (False, True):
        model, _, tokenizer = make_flamingo(family, gradient_checkpointing=checkpointing)
        randomize_gates(model)
        model.train()
        calls = []
        layers = [m for m in model.modules() if isinstance(m, FlamingoDecoderLayer)]
        for layer in layers:
            # a pre-hook: the recomputation stops early, once it has what backward needs
            layer.decoder_layer.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        vision, ids, mask = training_batch(tokenizer, batch=4)
        saved[checkpointing], loss = saved_activation_bytes(model, vision, ids, mask)
        after_forward = len(calls)
        loss.backward()
        recomputed_calls[checkpointing] = len(calls) - after_forward
        assert after_forward == len(layers)
        grads[checkpointing] = {
            n: p.grad for n, p in model.named_parameters() if p.grad is not None
        }
    assert recomputed_calls == {False: 0, True: len(layers)}
    assert saved[True] < 0.5 * saved[False], saved
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=0, atol=1e-6)


def two_forwards_one_backward(model, tokenizer, autocast: bool):
    """A training step's shape: two batches forward in one autocast region, one backward.
    Returns the backward's FLOPs and the gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    randomize_gates(model)
    model.train()
    vision, ids, mask = training_batch(tokenizer, batch=4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = sum(
            model(vision[:n], ids[:n], attention_mask=mask[:n], labels=ids[:n]).loss for n in (2, 4)
        )
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return counter.get_total_flops(), grads


@pytest.mark.parametrize("family", ["mpt", "llama3-gqa"])
def test_selective_checkpointing_recomputes_no_matmul_and_keeps_gradients(family, make_flamingo):
    """ "selective" reruns each layer's elementwise ops in backward but no matmul: backward
    FLOPs are those of no checkpointing, where "full" recomputes the forward matmuls too."""
    flops, grads = {}, {}
    for policy in (False, "selective", "full"):
        model, _, tokenizer = make_flamingo(family, gradient_checkpointing=policy)
        flops[policy], grads[policy] = two_forwards_one_backward(model, tokenizer, False)
    assert flops["selective"] == flops[False] < flops["full"]
    for name, grad in grads[False].items():
        assert torch.equal(grads["selective"][name], grad), name


def test_selective_checkpointing_under_autocast(make_flamingo):
    """Under bfloat16 autocast a checkpointed layer casts its float32 weights itself, where
    without checkpointing both forwards share autocast's cached cast and sum their weight
    gradients in bfloat16 before the float32 update; so gradients agree to bfloat16 rounding
    (not bit for bit), and no extra matmul runs."""
    model, _, tokenizer = make_flamingo("mpt")
    flops_plain, plain = two_forwards_one_backward(model, tokenizer, True)
    model, _, tokenizer = make_flamingo("mpt", gradient_checkpointing="selective")
    flops_selective, selective = two_forwards_one_backward(model, tokenizer, True)
    assert flops_selective == flops_plain
    for name, grad in plain.items():
        torch.testing.assert_close(selective[name], grad, rtol=2e-2, atol=2e-2 * grad.abs().max())


def test_gradient_checkpointing_can_be_switched(make_flamingo):
    model, _, _ = make_flamingo("llama")
    model.set_gradient_checkpointing(True)
    assert model.perceiver.gradient_checkpointing
    assert all(
        m.gradient_checkpointing for m in model.modules() if isinstance(m, FlamingoDecoderLayer)
    )
    model.set_gradient_checkpointing("selective")
    assert model.perceiver.gradient_checkpointing == "selective"
    with pytest.raises(ValueError, match="selective"):
        model.set_gradient_checkpointing("some")
    model.set_gradient_checkpointing(False)
    assert not model.perceiver.gradient_checkpointing

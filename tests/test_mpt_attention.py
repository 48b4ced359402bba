"""MPT through scaled-dot-product attention: the numbers of transformers' eager MPT."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from open_flamingo.src import mpt_attention
from open_flamingo.src.mpt_attention import use_sdpa_for_mpt
from open_flamingo.src.mpt_norms import apply_mpt_norms
from tiny_models import lm_config

LENGTH = 20
PADDING = [0, 5, 12]  # left padding per row


@pytest.fixture(params=[False, True], ids=["plain", "qk_ln"])
def models(request):
    """(eager, SDPA) copies of one random MPT, with QK-LayerNorm (random weights) or without."""
    torch.manual_seed(0)
    config = lm_config("mpt", num_layers=3)
    config.max_seq_len = 512
    config.attn_config.qk_ln = request.param
    eager = AutoModelForCausalLM.from_config(config)
    apply_mpt_norms(eager)
    with torch.no_grad():
        for name, parameter in eager.named_parameters():
            if "_ln." in name:
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
    fast = copy.deepcopy(eager)
    assert use_sdpa_for_mpt(fast) == 3
    return eager, fast


def batch():
    ids = torch.randint(0, 250, (len(PADDING), LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, pad in enumerate(PADDING):
        mask[row, :pad] = 0
    return ids, mask


def loss_of_real_tokens(model, ids, mask) -> torch.Tensor:
    """Summed next-token loss over each row's real tokens."""
    logits = model(ids, attention_mask=mask).logits
    total = 0
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        total = total + torch.nn.functional.cross_entropy(
            logits[row, -n:-1], ids[row, -n + 1 :], reduction="sum"
        )
    return total


def gradients(model, ids, mask) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_of_real_tokens(model, ids, mask).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_logits_of_real_tokens_equal_eager_mpt(models):
    eager, fast = models
    ids, mask = batch()
    with torch.no_grad():
        reference = eager(ids, attention_mask=mask).logits
        ours = fast(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=0, atol=1e-5)


def test_gradients_equal_each_row_alone(models):
    """Left-padded rows train exactly as the same rows unpadded (the eager reference)."""
    eager, fast = models
    ids, mask = batch()
    truth = [torch.zeros_like(p) for p in eager.parameters()]
    for row, pad in enumerate(PADDING):
        alone = gradients(eager, ids[row : row + 1, pad:], mask[row : row + 1, pad:])
        truth = [t + g for t, g in zip(truth, alone, strict=True)]
    for ours, expected in zip(gradients(fast, ids, mask), truth, strict=True):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_generation_with_kv_cache_equals_eager(models):
    eager, fast = models
    ids, mask = batch()
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    for beams in (1, 3):
        expected = eager.generate(ids, attention_mask=mask, num_beams=beams, **settings)
        assert torch.equal(
            fast.generate(ids, attention_mask=mask, num_beams=beams, **settings), expected
        )


def test_one_mask_per_lm_call_shared_by_all_layers(models, monkeypatch):
    _, fast = models
    built = []
    real = mpt_attention.additive_mask
    monkeypatch.setattr(mpt_attention, "additive_mask", lambda *a: built.append(1) or real(*a))
    # longer than 256 tokens: lengths are compared as values (ints above 256 are distinct
    # objects, which once made every layer rebuild the mask)
    ids = torch.randint(0, 250, (2, 300))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with torch.no_grad():
        fast(ids, attention_mask=mask)
        fast(ids, attention_mask=mask)
    assert len(built) == 2  # one per call, not one per layer


def test_bfloat16_autocast_stays_close_to_float32(models):
    _, fast = models
    ids, mask = batch()
    with torch.no_grad():
        full = fast(ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = fast(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    similarity = torch.nn.functional.cosine_similarity(half[real], full[real], dim=-1)
    assert similarity.min() > 0.999


def test_attention_modules_are_registered_in_place_with_the_same_keys(models):
    """Explicit modules in place of transformers' MptAttention: the checkpoint keys, parameters
    and module classes around them stay; no module has its forward replaced."""
    eager, fast = models
    assert list(fast.state_dict()) == list(eager.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(fast.parameters(), eager.parameters(), strict=True)
    )
    attention = [block.attn for block in fast.transformer.blocks]
    assert all(isinstance(a, mpt_attention.SdpaMptAttention) for a in attention)
    assert len({id(a.shared_mask) for a in attention}) == 1  # one mask per call for all layers
    assert not any("forward" in vars(m) for model in models for m in model.modules())


def test_other_families_are_left_alone(tiny_lm_dirs):
    llama = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama"])
    assert use_sdpa_for_mpt(llama) == 0


def test_static_cache_keys_get_the_bias_a_dynamic_cache_gives_them():
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    position_bias = build_mpt_alibi_tensor(num_heads=4, sequence_length=64)  # (h, 1, S)
    filled, slots = 9, 16  # keys held by a static cache of 16 slots
    dynamic = mpt_attention.additive_mask(position_bias, None, torch.bfloat16, filled)
    static = mpt_attention.additive_mask(
        position_bias, None, torch.bfloat16, slots, filled=torch.tensor(filled)
    )
    assert dynamic.shape == (1, 4, 1, filled) and static.shape == (1, 4, 1, slots)
    assert torch.equal(static[..., :filled], dynamic)  # bitwise: the same ALiBi entries
    assert torch.all(static[..., filled:] == 0)  # empty slots, masked by the causal mask
    # what MPT's own indexing (relative to the last slot) would give: the same softmax, but
    # every bias shifted by slope x 7, which bfloat16 rounds differently
    last_slot = position_bias[None, :, :, -slots:].to(torch.bfloat16)
    assert not torch.equal(last_slot[..., :filled], dynamic)

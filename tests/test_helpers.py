"""Perceiver and gated cross-attention: numerics against a plain float64 reference, and masking."""

import pytest
import torch

from open_flamingo.src.helpers import (
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    PerceiverResampler,
)

# ---------------------------------------------------------------- plain float64 reference
# The same math written out with explicit matmuls, softmax and masked_fill, the way the
# Flamingo paper / OpenFlamingo describe it (fill masked scores with -max, subtract the row max,
# softmax, zero the rows of text that has no preceding image).


def _linear(x, layer):
    return x @ layer.weight.to(x.dtype).T


def _layer_norm(x, layer):
    return torch.nn.functional.layer_norm(
        x, x.shape[-1:], layer.weight.to(x.dtype), layer.bias.to(x.dtype), layer.eps
    )


def _feed_forward(x, ff):
    h = _linear(_layer_norm(x, ff[0]), ff[1])
    return _linear(torch.nn.functional.gelu(h), ff[3])


def _heads(x, h):  # (..., N, h*d) -> (..., h, N, d)
    return x.reshape(*x.shape[:-1], h, -1).movedim(-2, -3)


def _softmax_attend(q, k, v, scale, mask=None):
    sim = (q * scale) @ k.transpose(-1, -2)
    if mask is not None:
        sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
    sim = sim - sim.amax(dim=-1, keepdim=True)
    return sim.softmax(dim=-1), v


def reference_perceiver(module: PerceiverResampler, x: torch.Tensor, dtype=torch.float64):
    x = x.to(dtype)
    b, t, f, v, d = x.shape
    x = x.reshape(b, t, f * v, d)
    latents = module.latents.to(dtype).expand(b, t, -1, -1)
    for attn, ff in module.layers:
        h = attn.heads
        xn, ln = _layer_norm(x, attn.norm_media), _layer_norm(latents, attn.norm_latents)
        q = _heads(_linear(ln, attn.to_q), h)
        k, val = _linear(torch.cat([xn, ln], dim=-2), attn.to_kv).chunk(2, dim=-1)
        weights, val = _softmax_attend(q, _heads(k, h), _heads(val, h), attn.scale)
        out = (weights @ val).movedim(-3, -2).flatten(-2)
        latents = _linear(out, attn.to_out) + latents
        latents = _feed_forward(latents, ff) + latents
    return _layer_norm(latents, module.norm)


def reference_cross_attention(module, x, media, text_time, dtype=torch.float64):
    x, media = x.to(dtype), media.to(dtype)
    b, t, n, dv = media.shape
    h = module.heads
    q = _heads(_linear(_layer_norm(x, module.norm), module.to_q), h)
    k, v = _linear(media.reshape(b, t * n, dv), module.to_kv).chunk(2, dim=-1)
    media_time = torch.arange(1, t + 1).repeat_interleave(n)
    compare = torch.eq if module.only_attend_immediate_media else torch.ge
    mask = compare(text_time[:, None, :, None], media_time[None, None, None, :])
    weights, v = _softmax_attend(q, _heads(k, h), _heads(v, h), module.scale, mask)
    if module.only_attend_immediate_media:
        weights = weights.masked_fill((text_time == 0)[:, None, :, None], 0.0)
    out = (weights @ v).movedim(-3, -2).flatten(-2)
    return _linear(out, module.to_out)


# ---------------------------------------------------------------- tests


def _randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial LayerNorm affine parameters and gates, so every term matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for submodule in module.modules():
            if isinstance(submodule, torch.nn.LayerNorm):
                for param in (submodule.weight, submodule.bias):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + 0.5)


def _text_time(b: int, length: int, t: int, seed: int = 0) -> torch.Tensor:
    """Random token streams with up to t images (0 before the first image)."""
    generator = torch.Generator().manual_seed(seed)
    is_media = torch.rand(b, length, generator=generator) < 0.15
    is_media[:, 0] = False  # some text before the first image
    return is_media.cumsum(-1).clamp(max=t)


# float64 shows the math is the same; float32 adds only float32 rounding (relative ~1e-7).
PRECISIONS = [(torch.float64, 0.0, 1e-10), (torch.float32, 1e-6, 1e-6)]


@pytest.mark.parametrize("dtype, rtol, atol", PRECISIONS)
def test_perceiver_matches_float64_reference(dtype, rtol, atol):
    module = PerceiverResampler(dim=48, depth=2).to(dtype)
    _randomize_(module)
    x = torch.randn(2, 3, 1, 10, 48, dtype=dtype)
    out = module(x)
    assert out.shape == (2, 3, 64, 48)
    ref = reference_perceiver(module, x)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("only_immediate", [True, False])
@pytest.mark.parametrize("dtype, rtol, atol", PRECISIONS)
def test_cross_attention_matches_float64_reference(only_immediate, dtype, rtol, atol):
    module = MaskedCrossAttention(
        dim=40, dim_visual=24, only_attend_immediate_media=only_immediate
    ).to(dtype)
    _randomize_(module)
    x, media = torch.randn(3, 30, 40, dtype=dtype), torch.randn(3, 4, 5, 24, dtype=dtype)
    text_time = _text_time(3, 30, 4)
    out = module(x, media, text_time)
    ref = reference_cross_attention(module, x, media, text_time)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)


def test_text_with_more_image_tokens_than_images_attends_uniformly():
    """Upstream fills every score of such a token with the same value -> uniform attention."""
    module = MaskedCrossAttention(dim=16, dim_visual=8).double()
    x, media = torch.randn(1, 3, 16).double(), torch.randn(1, 2, 4, 8).double()
    text_time = torch.tensor([[1, 2, 3]])  # the third token follows a 3rd image that is absent
    out = module(x, media, text_time)
    ref = reference_cross_attention(module, x, media, text_time)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    v = module.to_kv(media.reshape(1, 8, 8)).chunk(2, dim=-1)[1]  # (1, 8, 512)
    uniform = module.to_out(v.mean(dim=1))  # every head averages all 8 latents
    torch.testing.assert_close(out[0, 2], uniform[0], rtol=0, atol=1e-12)


def test_text_before_first_image_gets_zero_output():
    module = MaskedCrossAttention(dim=32, dim_visual=16)
    x, media = torch.randn(2, 12, 32), torch.randn(2, 3, 4, 16)
    text_time = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3], [0] * 12])
    out = module(x, media, text_time)
    assert torch.all(out[0, :3] == 0)
    assert torch.all(out[1] == 0)
    assert out[0, 3:].abs().amin(dim=-1).gt(0).all()


def test_token_attends_only_to_its_immediately_preceding_image():
    module = MaskedCrossAttention(dim=32, dim_visual=16)
    x, media = torch.randn(1, 9, 32), torch.randn(1, 3, 4, 16)
    text_time = torch.tensor([[1, 1, 1, 2, 2, 2, 3, 3, 3]])
    base = module(x, media, text_time)
    for image in range(3):
        changed_media = media.clone()
        changed_media[:, image] += torch.randn_like(changed_media[:, image])
        changed = (module(x, changed_media, text_time) - base).abs().amax(dim=-1)[0]
        follows_image = text_time[0] == image + 1
        assert torch.all(changed[follows_image] > 1e-4), image
        assert torch.all(changed[~follows_image] == 0), image


def test_all_previous_images_mode_attends_to_every_earlier_image():
    module = MaskedCrossAttention(dim=32, dim_visual=16, only_attend_immediate_media=False)
    x, media = torch.randn(1, 6, 32), torch.randn(1, 3, 4, 16)
    text_time = torch.tensor([[1, 1, 2, 2, 3, 3]])
    base = module(x, media, text_time)
    changed_media = media.clone()
    changed_media[:, 1] += 1.0  # image 2
    changed = (module(x, changed_media, text_time) - base).abs().amax(dim=-1)[0]
    assert torch.all(changed[:2] == 0) and torch.all(changed[2:] > 1e-4)


def test_gated_block_is_identity_with_closed_gates_and_applies_tanh_gates():
    block = GatedCrossAttentionBlock(dim=32, dim_visual=16)
    x, media = torch.randn(2, 7, 32), torch.randn(2, 2, 4, 16)
    text_time = torch.tensor([[0, 1, 1, 1, 2, 2, 2]] * 2)
    assert torch.equal(block(x, media, text_time), x)
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.ff_gate.fill_(-1.3)
    h = block.attn(x, media, text_time) * torch.tanh(torch.tensor(0.7)) + x
    expected = block.ff(h) * torch.tanh(torch.tensor(-1.3)) + h
    torch.testing.assert_close(block(x, media, text_time), expected, rtol=0, atol=1e-6)


def test_checkpoint_key_layout_matches_released_checkpoints():
    perceiver_keys = set(PerceiverResampler(dim=16, depth=1).state_dict())
    assert perceiver_keys == {
        "latents",
        "layers.0.0.norm_media.weight",
        "layers.0.0.norm_media.bias",
        "layers.0.0.norm_latents.weight",
        "layers.0.0.norm_latents.bias",
        "layers.0.0.to_q.weight",
        "layers.0.0.to_kv.weight",
        "layers.0.0.to_out.weight",
        "layers.0.1.0.weight",
        "layers.0.1.0.bias",
        "layers.0.1.1.weight",
        "layers.0.1.3.weight",
        "norm.weight",
        "norm.bias",
    }
    block_keys = set(GatedCrossAttentionBlock(dim=16, dim_visual=8).state_dict())
    assert block_keys == {
        "attn.norm.weight",
        "attn.norm.bias",
        "attn.to_q.weight",
        "attn.to_kv.weight",
        "attn.to_out.weight",
        "attn_gate",
        "ff.0.weight",
        "ff.0.bias",
        "ff.1.weight",
        "ff.3.weight",
        "ff_gate",
    }


def test_parameter_shapes_match_upstream_defaults():
    perceiver = PerceiverResampler(dim=1024)
    assert perceiver.latents.shape == (64, 1024)
    assert len(perceiver.layers) == 6
    attn = perceiver.layers[0][0]
    assert attn.to_q.weight.shape == (512, 1024)
    assert attn.to_kv.weight.shape == (1024, 1024)
    assert attn.to_out.weight.shape == (1024, 512)
    assert perceiver.layers[0][1][1].weight.shape == (4096, 1024)
    block = GatedCrossAttentionBlock(dim=2048, dim_visual=1024)
    assert block.attn.to_kv.weight.shape == (1024, 1024)
    assert block.attn.to_q.weight.shape == (512, 2048)
    assert block.attn_gate.shape == (1,) and block.attn_gate.item() == 0.0

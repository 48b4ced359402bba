"""Checkpoints: export / load round trip, upstream alias layouts, strict reporting."""

import re

import pytest
import torch

from open_flamingo import CheckpointMismatchError, load_checkpoint, trainable_state_dict
from open_flamingo.src.checkpoint import required_checkpoint_keys
from open_flamingo.src.checkpoint_fit import implied_interval
from tiny_models import IMAGE_SIZE, randomize_gates

LAYERS = "lang_encoder.transformer.blocks"  # MPT


SEED = 11  # fresh models share the frozen vision tower (random init) with the trained one


def fresh_model(make_flamingo, **kwargs):
    return make_flamingo("mpt", seed=SEED, **kwargs)[0].eval()


def trained_model(make_flamingo, family="mpt", **kwargs):
    """A model whose trainable weights differ from a fresh initialisation."""
    model, _, tokenizer = make_flamingo(family, seed=SEED, **kwargs)
    randomize_gates(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and not name.endswith("_gate"):
                param.add_(torch.randn_like(param) * 0.05)
    return model.eval(), tokenizer


def logits(model, tokenizer):
    ids = tokenizer(["<image>a cat<|endofchunk|><image>a dog"], return_tensors="pt").input_ids
    vision = torch.randn(
        1, 2, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        return model(vision, ids).logits


def upstream_full_state_dict(model) -> dict:
    """Our state dict in open-flamingo 2.0.x's module layout, aliases included."""
    ours = model.state_dict()
    upstream = {}
    for key, value in ours.items():
        match = re.match(rf"^{re.escape(LAYERS)}\.(\d+)\.decoder_layer\.(.+)$", key)
        if match:  # upstream has the layer under both names
            upstream[key] = value
            upstream[f"lang_encoder.old_decoder_blocks.{match[1]}.{match[2]}"] = value
            continue
        match = re.match(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)$", key)
        if match:
            upstream[key] = value
            upstream[f"{LAYERS}.{match[1]}.gated_cross_attn_layer.{match[2]}"] = value
            continue
        upstream[key] = value
    return upstream


def test_trainable_state_dict_has_released_keys_only(make_flamingo):
    model, _ = trained_model(make_flamingo)
    keys = set(trainable_state_dict(model))
    assert keys == set(required_checkpoint_keys(model))
    assert "lang_encoder.transformer.wte.weight" in keys
    assert {k.split(".")[0] for k in keys} == {"perceiver", "lang_encoder"}
    assert all(
        k == "lang_encoder.transformer.wte.weight"
        or k.startswith("lang_encoder.gated_cross_attn_layers.")
        for k in keys
        if k.startswith("lang_encoder.")
    )
    n_params = sum(v.numel() for v in trainable_state_dict(model).values())
    assert n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_embeddings_are_exported_even_when_frozen(make_flamingo):
    model, _ = trained_model(make_flamingo, freeze_lm_embeddings=True)
    assert not model.lang_encoder.get_input_embeddings().weight.requires_grad
    assert "lang_encoder.transformer.wte.weight" in trainable_state_dict(model)


def test_export_and_load_round_trip_gives_identical_logits(make_flamingo, tmp_path):
    model, tokenizer = trained_model(make_flamingo)
    torch.save(trainable_state_dict(model), tmp_path / "checkpoint.pt")
    fresh = fresh_model(make_flamingo)
    assert not torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))
    result = fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt"), strict=False)
    assert result.unexpected_keys == []
    assert not set(required_checkpoint_keys(fresh)) & set(result.missing_keys)
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


@pytest.mark.parametrize("layout", ["released", "full_upstream", "upstream_2_0_trainer"])
def test_upstream_layouts_load_with_plain_load_state_dict(layout, make_flamingo, tmp_path):
    model, tokenizer = trained_model(make_flamingo)
    full = upstream_full_state_dict(model)
    if layout == "released":  # trainable keys under gated_cross_attn_layers
        state = {k: full[k] for k in trainable_state_dict(model)}
    elif layout == "full_upstream":
        state = full
    else:  # 2.0's training code dropped gated_cross_attn_layers.* and kept the layer aliases
        state = {
            k: v
            for k, v in full.items()
            if k.startswith("perceiver.")
            or ".gated_cross_attn_layer." in k
            or k == "lang_encoder.transformer.wte.weight"
        }
        assert not any(k.startswith("lang_encoder.gated_cross_attn_layers.") for k in state)
    torch.save(state, tmp_path / "checkpoint.pt")
    fresh = fresh_model(make_flamingo)
    result = fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt"), strict=False)
    assert not set(required_checkpoint_keys(fresh)) & set(result.missing_keys)
    assert result.unexpected_keys == []
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


def test_full_upstream_state_dict_loads_strictly_and_restores_lm_weights(make_flamingo):
    model, tokenizer = trained_model(make_flamingo)
    with torch.no_grad():  # also change a frozen LM weight: it must come from the file
        model.lang_encoder.transformer.blocks[1].decoder_layer.attn.Wqkv.weight.mul_(1.5)
    full = upstream_full_state_dict(model)
    # only the alias copies name the decoder layers
    full = {k: v for k, v in full.items() if ".decoder_layer." not in k}
    fresh = fresh_model(make_flamingo)
    fresh.load_state_dict(full, strict=True)
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


def test_plain_hugging_face_layer_keys_load(make_flamingo):
    model, tokenizer = trained_model(make_flamingo)
    state = {k.replace(".decoder_layer.", "."): v for k, v in model.state_dict().items()}
    fresh = fresh_model(make_flamingo)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod."])
def test_load_checkpoint_accepts_trainer_dicts_and_wrapper_prefixes(
    wrapper, make_flamingo, tmp_path
):
    model, tokenizer = trained_model(make_flamingo)
    wrapped = {f"{wrapper}{k}": v for k, v in trainable_state_dict(model).items()}
    torch.save({"epoch": 3, "model_state_dict": wrapped}, tmp_path / "checkpoint_3.pt")
    fresh = fresh_model(make_flamingo)
    load_checkpoint(fresh, tmp_path / "checkpoint_3.pt")
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


@pytest.mark.parametrize("layout", ["released", "full_upstream", "upstream_2_0_trainer"])
def test_load_checkpoint_loads_the_upstream_layouts(layout, make_flamingo):
    model, tokenizer = trained_model(make_flamingo)
    full = upstream_full_state_dict(model)
    if layout == "released":
        state = {k: full[k] for k in trainable_state_dict(model)}
    elif layout == "full_upstream":
        state = full
    else:
        state = {
            k: v
            for k, v in full.items()
            if not k.startswith("lang_encoder.gated_cross_attn_layers.")
            and (".gated_cross_attn_layer." in k or k in trainable_state_dict(model))
        }
    fresh = fresh_model(make_flamingo)
    result = load_checkpoint(fresh, state)
    assert result.unexpected_keys == []
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


def test_load_checkpoint_reports_missing_flamingo_weights(make_flamingo):
    model, _ = trained_model(make_flamingo)
    state = trainable_state_dict(model)
    del state["lang_encoder.gated_cross_attn_layers.2.attn.to_kv.weight"]
    del state["perceiver.latents"]
    fresh = fresh_model(make_flamingo)
    with pytest.raises(
        CheckpointMismatchError, match=r"lacks 2 Flamingo weight\(s\).*gated_cross_attn_layers\.2"
    ):
        load_checkpoint(fresh, state)


def untouched(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("saved_every, model_every", [(2, 1), (1, 2), (1, 4)])
def test_checkpoint_of_another_cross_attention_interval_is_refused_naming_it(
    saved_every, model_every, make_flamingo
):
    model, _ = trained_model(make_flamingo, cross_attn_every_n_layers=saved_every)
    fresh = fresh_model(make_flamingo, cross_attn_every_n_layers=model_every)
    before = untouched(fresh)
    with pytest.raises(CheckpointMismatchError) as refused:
        load_checkpoint(fresh, trainable_state_dict(model))
    message = str(refused.value)
    assert f"(cross_attn_every_n_layers={saved_every})" in message
    assert f"(cross_attn_every_n_layers={model_every}, 4 decoder layers)" in message
    assert f"--cross_attn_every_n_layers {saved_every}" in message
    assert_unchanged(fresh, before)  # refused before anything was loaded


@pytest.mark.parametrize("layout", ["released", "upstream_2_0_trainer"])
def test_plain_load_state_dict_reports_blocks_that_land_nowhere(layout, make_flamingo):
    """Blocks 0 and 2 of an every-layer checkpoint have no place in an every-2nd-layer model:
    torch alone reported nothing (a None ModuleList entry swallows the keys under it)."""
    model, _ = trained_model(make_flamingo, cross_attn_every_n_layers=1)
    state = trainable_state_dict(model)
    if layout == "upstream_2_0_trainer":  # the blocks under their per-layer alias names
        block = r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\."
        state = {
            re.sub(block, rf"{LAYERS}.\1.gated_cross_attn_layer.", k): v for k, v in state.items()
        }
    in_block = r"(gated_cross_attn_layers|blocks)\.{}\."
    stray = sorted(k for k in state if re.search(in_block.format("[02]"), k))
    assert len(stray) == 2 * len([k for k in state if re.search(in_block.format(1), k)]) > 0
    fresh = fresh_model(make_flamingo, cross_attn_every_n_layers=2)
    result = fresh.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == stray
    assert not set(required_checkpoint_keys(fresh)) & set(result.missing_keys)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(state, strict=True)


def test_flamingo_weights_that_land_nowhere_are_refused(make_flamingo):
    model, _ = trained_model(make_flamingo)
    state = trainable_state_dict(model)
    state["perceiver.frame_embs"] = torch.zeros(1, 64)  # this model has no frame embeddings
    with pytest.raises(
        CheckpointMismatchError, match=r"1 of its Flamingo weight\(s\) land nowhere"
    ):
        load_checkpoint(fresh_model(make_flamingo), state)


def test_other_keys_that_land_nowhere_are_reported_not_refused(make_flamingo):
    model, tokenizer = trained_model(make_flamingo)
    state = trainable_state_dict(model)
    state["lang_encoder.transformer.extra.weight"] = torch.zeros(1)
    fresh = fresh_model(make_flamingo)
    result = load_checkpoint(fresh, state)
    assert result.unexpected_keys == ["lang_encoder.transformer.extra.weight"]
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))


@pytest.mark.parametrize(
    "key, rows, cause",
    [
        ("lang_encoder.transformer.wte.weight", slice(0, 259), "another tokenizer"),
        ("perceiver.latents", slice(0, 32), "another vision encoder"),
        (
            "lang_encoder.gated_cross_attn_layers.1.attn.to_q.weight",
            slice(0, 256),
            "another language model",
        ),
    ],
)
def test_shape_mismatches_are_refused_naming_their_cause(key, rows, cause, make_flamingo):
    model, _ = trained_model(make_flamingo)
    state = trainable_state_dict(model)
    state[key] = state[key][rows]
    fresh = fresh_model(make_flamingo)
    before = untouched(fresh)
    with pytest.raises(
        CheckpointMismatchError, match=rf"1 shape\(s\) differ \({re.escape(key)}.*{cause}"
    ):
        load_checkpoint(fresh, state)
    assert_unchanged(fresh, before)


def test_gpt_neox_untied_output_embedding_loads_from_its_upstream_name(make_flamingo):
    """Upstream (transformers 4) saved GPT-NeoX's head as `embed_out`, in every checkpoint (its
    filter kept each key containing "embed"); transformers 5 calls it `lm_head`."""
    model, tokenizer = trained_model(make_flamingo, "gpt_neox")
    with torch.no_grad():
        model.lang_encoder.lm_head.weight[257:].normal_()  # the new tokens' rows
    state = trainable_state_dict(model)
    state["lang_encoder.embed_out.weight"] = model.lang_encoder.lm_head.weight.detach().clone()
    fresh = make_flamingo("gpt_neox", seed=SEED)[0].eval()
    assert not torch.equal(
        fresh.lang_encoder.lm_head.weight, state["lang_encoder.embed_out.weight"]
    )
    result = fresh.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert torch.equal(fresh.lang_encoder.lm_head.weight, state["lang_encoder.embed_out.weight"])
    assert torch.equal(logits(fresh, tokenizer), logits(model, tokenizer))
    again = make_flamingo("gpt_neox", seed=SEED)[0].eval()
    assert load_checkpoint(again, state).unexpected_keys == []
    assert torch.equal(logits(again, tokenizer), logits(model, tokenizer))
    state["lang_encoder.embed_out.weight"] = state["lang_encoder.embed_out.weight"][:-1]
    with pytest.raises(
        CheckpointMismatchError, match=r"lm_head.weight: \(259, 64\) there.*another tokenizer"
    ):
        load_checkpoint(make_flamingo("gpt_neox", seed=SEED)[0], state)


def test_implied_interval():
    assert implied_interval({0, 1, 2, 3}) == 1
    assert implied_interval({1, 3}) == 2
    assert implied_interval({3, 7, 11}) == 4
    assert implied_interval({1, 2}) is None
    assert implied_interval(set()) is None

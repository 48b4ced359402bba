"""Flamingo on every supported LM family: conditioning, generation, KV cache, errors."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Cache, GPT2Config

from open_flamingo import Flamingo
from open_flamingo.src.mpt_attention import use_sdpa_for_mpt
from tiny_models import FAMILIES, IMAGE_SIZE, randomize_gates

EOC = 257  # <|endofchunk|> with the byte tokenizer


def images(batch: int, num: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """(B, T, 1, 3, H, W) random images."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(dtype)


def open_model(make_flamingo, family: str, dtype=torch.float64):
    """A model whose images matter (gates open), in eval mode and `dtype`."""
    model, _, tokenizer = make_flamingo(family)
    randomize_gates(model)
    return model.to(dtype).eval(), tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_closed_gates_give_the_plain_lm_logits(family, make_flamingo, tiny_lm_dirs):
    model, _, tokenizer = make_flamingo(family)
    model.eval()
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[family]).eval()
    use_sdpa_for_mpt(lm)  # as Flamingo runs MPT (tests/test_mpt_attention.py: eager vs SDPA)
    lm.resize_token_embeddings(len(tokenizer))
    batch = tokenizer(
        ["text<image>a cat<|endofchunk|><image>a dog", "<image>x"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        ours = model(images(2, 2), batch.input_ids, attention_mask=batch.attention_mask).logits
        plain = lm(batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_images_change_only_the_tokens_after_them(family, make_flamingo):
    model, tokenizer = open_model(make_flamingo, family)
    ids = tokenizer(["before<image>after one<|endofchunk|><image>after two"], return_tensors="pt")
    first_image = ids.input_ids[0].tolist().index(258)
    vision = images(1, 2, dtype=torch.float64)
    with torch.no_grad():
        base = model(vision, ids.input_ids).logits
        changed_vision = vision.clone()
        changed_vision[:, 1] = images(1, 1, seed=5, dtype=torch.float64)[:, 0]
        changed = model(changed_vision, ids.input_ids).logits
    diff = (changed - base).abs().amax(dim=-1)[0]
    second_image = ids.input_ids[0].tolist().index(258, first_image + 1)
    assert torch.all(diff[:second_image] == 0)
    assert torch.all(diff[second_image:] > 0)


def stepwise_greedy(model, vision, ids, new_tokens: int, banned: int = EOC) -> torch.Tensor:
    """Greedy decoding by full forward passes without any cache (the reference)."""
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(vision, ids).logits[:, -1]
        logits[:, banned] = -torch.inf  # as min_new_tokens does for the EOS id
        ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generate_equals_stepwise_full_forward(family, make_flamingo):
    model, tokenizer = open_model(make_flamingo, family)
    prompts = ["<image>a photo<|endofchunk|><image>two", "<image>x y zzz<|endofchunk|><image>abc"]
    ids = tokenizer(prompts, return_tensors="pt").input_ids
    assert ids.shape[1] == 13  # same length: no padding involved here
    vision = images(2, 2, dtype=torch.float64)
    generated = model.generate(vision, ids, max_new_tokens=12, min_new_tokens=12)
    reference = stepwise_greedy(model, vision, ids, 12)
    assert torch.equal(generated, reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_generates_as_one_by_one(family, make_flamingo):
    # float32: HF's MPT turns fully masked (padding) rows into NaN in float64 (it softmaxes
    # float64 scores filled with float64's min after a cast to float32).
    model, tokenizer = open_model(make_flamingo, family, dtype=torch.float32)
    tokenizer.padding_side = "left"
    prompts = [
        "<image>a red square<|endofchunk|><image>a",
        "<image>blue",
        "<image>long prompt here: x",
    ]
    vision = images(3, 2)
    vision_rows = [vision[i : i + 1, : p.count("<image>")] for i, p in enumerate(prompts)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    # the batch needs as many image slots as its longest row; unused slots are never attended
    batched = model.generate(
        vision,
        batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=8,
        min_new_tokens=8,
    )
    for i, prompt in enumerate(prompts):
        single = tokenizer([prompt], return_tensors="pt")
        alone = model.generate(
            vision_rows[i],
            single.input_ids,
            attention_mask=single.attention_mask,
            max_new_tokens=8,
            min_new_tokens=8,
        )
        assert torch.equal(batched[i, -8:], alone[0, -8:]), (family, prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_returns_prompt_plus_new_tokens(family, make_flamingo):
    model, tokenizer = open_model(make_flamingo, family, dtype=torch.float32)
    ids = tokenizer(["<image>a", "<image>b"], return_tensors="pt").input_ids
    out = model.generate(images(2, 1), ids, num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert out.shape[0] == 4 and 1 < out.shape[1] - ids.shape[1] <= 5
    assert torch.equal(out[:, : ids.shape[1]], ids.repeat_interleave(2, dim=0))
    sampled = model.generate(
        images(2, 1), ids, do_sample=True, num_return_sequences=3, max_new_tokens=4
    )
    assert sampled.shape[0] == 6


def test_generation_stops_at_endofchunk_by_default(make_flamingo):
    model, tokenizer = open_model(make_flamingo, "llama3-gqa")  # untied output embeddings
    ids = tokenizer(["<image>a"], return_tensors="pt").input_ids
    vision = images(1, 1, dtype=torch.float64)
    first = model.generate(vision, ids, max_new_tokens=1)[0, -1]
    with torch.no_grad():  # make <|endofchunk|> score 10x the greedy token's (positive) logit
        head = model.lang_encoder.get_output_embeddings().weight
        head[EOC] = 10 * head[first]
    out = model.generate(vision, ids, max_new_tokens=10)
    assert out.shape[1] == ids.shape[1] + 1 and out[0, -1].item() == EOC


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_decodes_with_the_kv_cache_even_where_the_lm_config_disables_it(
    num_beams, make_flamingo
):
    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    assert model.lang_encoder.config.use_cache is False  # as MPT configs ship
    lengths = []
    model.lang_encoder.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    ids = tokenizer(["<image>a cat<|endofchunk|><image>a"] * 2, return_tensors="pt").input_ids
    settings = dict(num_beams=num_beams, min_new_tokens=6, max_new_tokens=6)
    cached = model.generate(images(2, 2), ids, **settings)
    assert lengths == [ids.shape[1]] + [1] * 5  # the prompt once, then one token per step

    lengths.clear()
    uncached = model.generate(images(2, 2), ids, use_cache=False, **settings)
    assert lengths == list(range(ids.shape[1], ids.shape[1] + 6))
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["mpt", "llama3-gqa", "gpt_neo"])
def test_cache_media_scoring_with_kv_cache_equals_full_forward(family, make_flamingo):
    model, tokenizer = open_model(make_flamingo, family)
    context = tokenizer(
        ["<image>a cat<|endofchunk|><image>a dog is"], return_tensors="pt"
    ).input_ids
    continuation = tokenizer([" sitting"], return_tensors="pt").input_ids
    vision = images(1, 2, dtype=torch.float64)
    with torch.no_grad():
        full = model(vision, torch.cat([context, continuation], dim=1)).logits
        model.cache_media(input_ids=context, vision_x=vision)
        first = model(None, context, clear_conditioned_layers=False, use_cache=True)
        cache = first.cache if hasattr(first, "cache") else first.past_key_values
        assert isinstance(cache, Cache)
        second = model(
            None,
            continuation,
            past_key_values=cache,
            clear_conditioned_layers=False,
            use_cache=True,
        )
        model.uncache_media()
    # float64 model, but HF's MPT softmaxes in float32: 1e-6, not 1e-12
    torch.testing.assert_close(first.logits, full[:, : context.shape[1]], rtol=0, atol=1e-6)
    torch.testing.assert_close(second.logits, full[:, context.shape[1] :], rtol=0, atol=1e-6)


def test_media_must_be_given_or_cached(make_flamingo):
    model, _, tokenizer = make_flamingo("mpt")
    ids = tokenizer(["<image>a"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="cache_media"):
        model(None, ids)
    model.cache_media(input_ids=ids, vision_x=images(1, 1))
    with pytest.raises(ValueError, match="uncache_media"):
        model(images(1, 1), ids)
    model.uncache_media()
    with pytest.raises(RuntimeError, match="without visual conditioning"):
        model.lang_encoder(ids)


def test_bad_vision_shapes_are_explained(make_flamingo):
    model, _, tokenizer = make_flamingo("mpt")
    ids = tokenizer(["<image>a"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match=r"\(B, T_img, F, C, H, W\)"):
        model(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), ids)
    with pytest.raises(ValueError, match="single-frame"):
        model(torch.randn(1, 1, 2, 3, IMAGE_SIZE, IMAGE_SIZE), ids)


TWO_IMAGES = "<image>a cat<|endofchunk|><image>a dog"


def test_more_image_tokens_than_images_is_refused_everywhere(make_flamingo):
    model, _, tokenizer = make_flamingo("mpt")
    rows = tokenizer(["<image>one", TWO_IMAGES], return_tensors="pt", padding=True).input_ids
    refused = r"Row\(s\) \[1\] of the text hold up to 2 <image> tokens, but vision_x has 1 image"
    with pytest.raises(ValueError, match=refused):
        model(images(2, 1), rows)
    with pytest.raises(ValueError, match=refused):
        model.generate(images(2, 1), rows, max_new_tokens=2)
    with pytest.raises(ValueError, match=refused):
        model.cache_media(input_ids=rows, vision_x=images(2, 1))
    model.cache_media(input_ids=rows[:1], vision_x=images(1, 1))
    with pytest.raises(ValueError, match=r"but the media cached by cache_media has 1 image"):
        model(None, rows[1:])
    model.uncache_media()


def test_more_images_than_image_tokens_stays_legal(make_flamingo):
    """Training pads every row to the same number of images; padding images are never seen."""
    model, tokenizer = open_model(make_flamingo, "mpt")
    ids = tokenizer([TWO_IMAGES], return_tensors="pt").input_ids
    vision = images(1, 4, dtype=torch.float64)
    with torch.no_grad():
        padded = model(vision, ids).logits
        exact = model(vision[:, :2], ids).logits
    torch.testing.assert_close(padded, exact, rtol=0, atol=1e-12)  # float64: more masked keys


def test_vision_batch_must_be_the_text_batch(make_flamingo):
    model, _, tokenizer = make_flamingo("mpt")
    ids = tokenizer(["<image>a", "<image>b"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="vision_x has 1 rows of images but lang_x has 2 rows"):
        model(images(1, 1), ids)  # was: the one image silently served both rows
    with pytest.raises(ValueError, match="vision_x has 1 rows"):
        model.cache_media(input_ids=ids, vision_x=images(1, 1))
    # generate repeats the images per beam itself: a batch already repeated is refused
    with pytest.raises(ValueError, match="vision_x has 6 rows .* repeats them per beam"):
        model.generate(images(6, 1), ids, num_beams=3, max_new_tokens=2)


def test_text_scored_against_cached_media_takes_k_rows_per_media_row(make_flamingo):
    model, tokenizer = open_model(make_flamingo, "mpt")
    context = tokenizer(["<image>a cat is", "<image>a dog is"], return_tensors="pt").input_ids
    vision = images(2, 1, dtype=torch.float64)
    names = tokenizer([" red", " big", " red", " big"], return_tensors="pt").input_ids
    with torch.no_grad():
        full = model(
            vision.repeat_interleave(2, dim=0),
            torch.cat([context.repeat_interleave(2, dim=0), names], 1),
        ).logits
        model.cache_media(input_ids=context, vision_x=vision)
        scored = model(
            None,
            torch.cat([context.repeat_interleave(2, dim=0), names], 1),
            clear_conditioned_layers=False,
        ).logits
        model.uncache_media()
        model.cache_media(input_ids=context, vision_x=vision)
        with pytest.raises(ValueError, match="3 rows of text for 2 rows of media"):
            model(None, names[:3], clear_conditioned_layers=False)
        model.uncache_media()
    torch.testing.assert_close(scored, full, rtol=0, atol=1e-12)


def test_cached_media_score_text_batches_of_any_size_one_after_another(make_flamingo):
    """k text rows per media row, k changing from call to call (class-name chunks of any size),
    each scored as the full forward scores it; the caller's images are left as they were."""
    model, tokenizer = open_model(make_flamingo, "mpt")
    context = tokenizer(["<image>a cat is", "<image>a dog is"], return_tensors="pt").input_ids
    vision = images(2, 1, dtype=torch.float64)
    given = vision.clone()
    batches = []
    for k in (2, 3, 1):
        names = tokenizer([" red", " big", " old"][:k] * 2, return_tensors="pt").input_ids
        batches.append((k, torch.cat([context.repeat_interleave(k, dim=0), names], 1)))
    with torch.no_grad():
        full = [model(vision.repeat_interleave(k, dim=0), lang_x).logits for k, lang_x in batches]
        model.cache_media(input_ids=context, vision_x=vision)
        scored = [model(None, x, clear_conditioned_layers=False).logits for _, x in batches]
        model.uncache_media()
    for ours, expected in zip(scored, full, strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    assert torch.equal(vision, given)


def test_generation_counts_image_tokens_once_not_per_step(make_flamingo, monkeypatch):
    """The <image> count reads a number back from the device: at the prompt, never per token."""
    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    calls = []
    check = Flamingo._check_image_tokens
    monkeypatch.setattr(Flamingo, "_check_image_tokens", lambda *a: calls.append(1) or check(*a))
    ids = tokenizer([TWO_IMAGES] * 2, return_tensors="pt").input_ids
    out = model.generate(images(2, 2), ids, num_beams=2, min_new_tokens=6, max_new_tokens=6)
    assert out.shape[1] == ids.shape[1] + 6 and len(calls) == 1


def test_unknown_family_needs_decoder_layers_attr_name(make_flamingo):
    vision = make_flamingo("mpt")[0].vision_encoder
    lm = AutoModelForCausalLM.from_config(
        GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=260)
    )
    with pytest.raises(ValueError, match="decoder_layers_attr_name"):
        Flamingo(vision, lm, eoc_token_id=257, media_token_id=258, vis_dim=64)
    model = Flamingo(
        vision,
        lm,
        eoc_token_id=257,
        media_token_id=258,
        vis_dim=64,
        cross_attn_every_n_layers=2,
        decoder_layers_attr_name="transformer.h",
    )
    assert [b is not None for b in model.lang_encoder.gated_cross_attn_layers] == [False, True]
    logits = model(images(1, 1), torch.tensor([[258, 65, 66]])).logits
    assert logits.shape == (1, 3, 260)


def test_wrong_decoder_layers_attr_name_is_explained(make_flamingo):
    with pytest.raises(ValueError, match="no attribute path 'model.layerz'"):
        make_flamingo("llama", decoder_layers_attr_name="model.layerz")


def test_cross_attention_sparser_than_the_lm_is_refused(make_flamingo):
    with pytest.raises(ValueError, match="cross_attn_every_n_layers 5 exceeds the 4 decoder"):
        make_flamingo("llama", cross_attn_every_n_layers=5)


@pytest.mark.parametrize("every, expected", [(1, [0, 1, 2, 3]), (2, [1, 3]), (4, [3])])
def test_cross_attention_placement(every, expected, make_flamingo):
    model, _, _ = make_flamingo("llama", cross_attn_every_n_layers=every)
    layers = model.lang_encoder.gated_cross_attn_layers
    assert [i for i, block in enumerate(layers) if block is not None] == expected
    wrappers = model.lang_encoder.model.layers
    for i, wrapper in enumerate(wrappers):
        assert wrapper.gated_cross_attn_layer is layers[i]
    # each Flamingo weight is registered exactly once (only the LM's own tying repeats one)
    names_by_param = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param.setdefault(param, []).append(name)
    repeated = [names for names in names_by_param.values() if len(names) > 1]
    assert repeated == [["lang_encoder.model.embed_tokens.weight", "lang_encoder.lm_head.weight"]]


@pytest.mark.parametrize("family", ["mpt", "llama3-gqa"])
def test_bfloat16_model_agrees_with_float32(family, make_flamingo):
    model32, tokenizer = open_model(make_flamingo, family, dtype=torch.float32)
    model16, _ = open_model(make_flamingo, family, dtype=torch.bfloat16)
    ids = tokenizer(["<image>a cat<|endofchunk|><image>a dog"], return_tensors="pt").input_ids
    vision = images(1, 2)  # float32 input: the model casts it to its vision encoder's dtype
    with torch.no_grad():
        logits32 = model32(vision, ids).logits
        logits16 = model16(vision, ids).logits
    assert logits16.dtype == torch.bfloat16 and torch.isfinite(logits16).all()
    similarity = torch.nn.functional.cosine_similarity(logits16.float(), logits32, dim=-1)
    assert similarity.min() > 0.99
    out = model16.generate(vision, ids, max_new_tokens=4, num_beams=2)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_computes_the_media_keys_values_once(num_beams, make_flamingo, monkeypatch):
    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    blocks = [b for b in model.lang_encoder.gated_cross_attn_layers if b is not None]
    calls = []
    for block in blocks:
        block.attn.to_kv.register_forward_hook(lambda *_: calls.append(1))
    ids = tokenizer(["<image>a cat<|endofchunk|><image>a"] * 2, return_tensors="pt").input_ids
    settings = dict(num_beams=num_beams, min_new_tokens=6, max_new_tokens=6)
    cached = model.generate(images(2, 2), ids, **settings)
    assert len(calls) == len(blocks)  # the prompt step only, not once per new token

    from open_flamingo.src.media import MediaSession

    monkeypatch.setattr(MediaSession, "_keeps_keys_values", lambda self: False)
    calls.clear()
    recomputed = model.generate(images(2, 2), ids, **settings)
    assert len(calls) == 6 * len(blocks)
    assert torch.equal(cached, recomputed)


STATIC_PROMPTS = ["<image>a cat<|endofchunk|><image>a", "<image>x y z w<|endofchunk|><image>abc"]


def left_padded(tokenizer):
    tokenizer.padding_side = "left"
    batch = tokenizer(STATIC_PROMPTS, return_tensors="pt", padding=True)
    assert batch.attention_mask.min() == 0  # padding involved
    return batch


def generate_on(model, batch, **kwargs) -> torch.Tensor:
    """`generate` on a `left_padded` batch and its two images per prompt."""
    return model.generate(images(2, 2), batch.input_ids, batch.attention_mask, **kwargs)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("family", ["mpt", "llama"])
def test_static_cache_generation_gives_the_dynamic_cache_tokens(family, num_beams, make_flamingo):
    model, tokenizer = open_model(make_flamingo, family, dtype=torch.float32)
    batch = left_padded(tokenizer)
    settings = dict(num_beams=num_beams, min_new_tokens=8, max_new_tokens=8)
    dynamic = generate_on(model, batch, **settings)
    static = generate_on(model, batch, cache_implementation="static", **settings)
    assert torch.equal(static, dynamic)


def test_static_decoding_keeps_its_buffers_in_place_within_and_across_calls(make_flamingo):
    from transformers import StaticCache

    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    batch = left_padded(tokenizer)
    buffers = []

    def record(_, args, kwargs):
        layer = kwargs["cache"].layers[0]
        if kwargs["input_ids"].shape[1] == 1:  # decoding steps
            # the tensors themselves: held here, a new one could not reuse a freed address
            buffers.append((layer.keys, layer.values, model._media.session.image_count))

    model.lang_encoder.register_forward_pre_hook(record, with_kwargs=True)
    settings = dict(num_beams=3, min_new_tokens=6, max_new_tokens=6)
    cache = StaticCache(
        config=model.lang_encoder.config, max_cache_len=batch.input_ids.shape[1] + 6
    )
    outputs = []
    for _ in range(2):
        cache.reset()
        outputs.append(generate_on(model, batch, cache=cache, **settings))
    assert torch.equal(outputs[0], outputs[1])
    # beam search reorders the cache at every step, and each call zeroes it and the count
    assert len(buffers) == 2 * 5
    addresses = {tuple(t.data_ptr() for t in step) for step in buffers}
    assert len(addresses) == 1


@pytest.mark.parametrize("family", ["mpt", "llama"])
def test_compiled_decoding_is_one_graph_with_the_eager_tokens(family, make_flamingo):
    from torch._dynamo.utils import counters

    from open_flamingo.src.decoding import compile_for_decoding

    model, tokenizer = open_model(make_flamingo, family, dtype=torch.float32)
    batch = left_padded(tokenizer)
    settings = dict(num_beams=3, min_new_tokens=8, max_new_tokens=8)
    eager = generate_on(model, batch, **settings)
    torch._dynamo.reset()
    counters.clear()
    # fullgraph (the default): any graph break fails. aot_eager traces what inductor would
    # compile, without its code generation; CUDA graphs need a GPU (docs/benchmarks.md).
    compile_for_decoding(model.lang_encoder, backend="aot_eager", mode=None)
    assert "forward" not in vars(model.lang_encoder)  # the LM's own forward, not replaced
    for _ in range(2):  # the second call reuses the graph: no recompilation
        compiled = generate_on(model, batch, cache_implementation="static", **settings)
        assert torch.equal(compiled, eager)
        assert counters["stats"]["unique_graphs"] == 1  # every decoding step; the prompt eager
    with torch.no_grad():  # any other call stays eager: nothing more is compiled
        model(images(2, 2), batch.input_ids, batch.attention_mask)
    assert counters["stats"]["unique_graphs"] == 1


def test_generation_under_inference_mode_then_without_it(make_flamingo):
    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    ids = tokenizer(["<image>a cat<|endofchunk|><image>a"], return_tensors="pt").input_ids
    settings = dict(min_new_tokens=3, max_new_tokens=3)
    with torch.inference_mode():
        first = model.generate(images(1, 2), ids, **settings)
    assert model._image_counts.tensor.is_inference()
    second = model.generate(images(1, 2), ids, **settings)  # may not write an inference tensor
    assert torch.equal(first, second)


def test_transformers_own_compiled_greedy_step_traces_media_location_in_one_graph(make_flamingo):
    """With a static cache, transformers compiles the LM's whole call, forward hooks included,
    for greedy decoding on accelerators. The media-locating hook must trace without a
    data-dependent branch (fullgraph fails on any graph break)."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    batch = left_padded(tokenizer)
    settings = dict(min_new_tokens=8, max_new_tokens=8)
    eager = generate_on(model, batch, **settings)
    config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    config._compile_all_devices = True  # transformers compiles on accelerators only otherwise
    torch._dynamo.reset()
    counters.clear()
    compiled = generate_on(
        model, batch, cache_implementation="static", compile_config=config, **settings
    )
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert torch.equal(compiled, eager)


def test_media_cached_under_inference_mode_can_be_scored_without_it(make_flamingo):
    model, tokenizer = open_model(make_flamingo, "mpt", dtype=torch.float32)
    context = tokenizer(["<image>a cat<|endofchunk|><image>a"], return_tensors="pt").input_ids
    text = tokenizer([" dog"], return_tensors="pt").input_ids
    with torch.inference_mode():
        model.cache_media(context, images(1, 2))
        expected = model(None, text, clear_conditioned_layers=False).logits
    with torch.no_grad():
        logits = model(None, text, clear_conditioned_layers=False).logits
    model.uncache_media()
    assert torch.equal(logits, expected)

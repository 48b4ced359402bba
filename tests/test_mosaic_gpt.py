"""MosaicGPT (OpenFlamingo-3B's LM) and llm-foundry MPT folders loaded as transformers' MPT,
against tests/mosaic_gpt_oracle.py, an independent MosaicGPT written from the published facts."""

import contextlib
import copy
import json

import mosaic_gpt_oracle as oracle
import pytest
import torch
from transformers import MptForCausalLM

from open_flamingo import create_model_and_transforms
from open_flamingo.src.mosaic_gpt import load_causal_lm
from open_flamingo.src.mpt_attention import use_sdpa_for_mpt
from tiny_models import VISION_ENCODER, save_tiny_lm

PADDING = [0, 4, 9]  # left padding of each prompt row
NEW_TOKENS = 6
# the oracle's MosaicGPT names -> the native (= llm-foundry) ones, written out from the facts
NATIVE_NAMES = {
    "ln_1.": "norm_1.",
    "ln_2.": "norm_2.",
    "mlp.mlp_up.": "ffn.up_proj.",
    "mlp.mlp_down.": "ffn.down_proj.",
    "transformer.ln_f.": "transformer.norm_f.",
}


def prompts(length: int = 16, seed: int = 1):
    """(3, length) ids and attention mask, left-padded by PADDING."""
    ids = torch.randint(
        0, 256, (len(PADDING), length), generator=torch.Generator().manual_seed(seed)
    )
    mask = torch.ones_like(ids)
    for row, pad in enumerate(PADDING):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def make_folder(root, layout="safetensors", seed=0, **overrides):
    """A saved tiny MosaicGPT: (folder, config, weights)."""
    config = oracle.tiny_config(**overrides)
    weights = oracle.random_weights(config, seed)
    folder = oracle.save_folder(root / f"mosaic-{layout}-{seed}", config, weights, layout)
    return folder, config, weights


def paths(model) -> dict:
    """The attention paths this project runs MPT on: transformers' eager forward (with QK-LN)
    and the SDPA one of mpt_attention.py."""
    sdpa = copy.deepcopy(model)
    use_sdpa_for_mpt(sdpa)
    return {"eager": model, "sdpa": sdpa}


@contextlib.contextmanager
def cuda_autocast_flag():
    """CUDA autocast's flag on, as on a GPU: MosaicML's low-precision LayerNorm then normalises
    in the autocast dtype (on this CPU, CPU autocast's bfloat16)."""
    torch.set_autocast_enabled("cuda", True)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", False)


@contextlib.contextmanager
def precision(name: str):
    with contextlib.ExitStack() as stack:
        if name != "fp32":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if name == "bf16-gpu-norms":
            stack.enter_context(cuda_autocast_flag())
        yield


# max |logit - oracle| over real tokens, per path and precision. Eager runs MosaicGPT's ops in
# its order: exact, but for float32 rounding in cached decoding (other matrix shapes). SDPA keeps
# the scores in float32 where MosaicGPT rounds them to bfloat16: about one bfloat16 step of the
# logits (up to ~20 here: a step of 0.125).
TOLERANCE = {
    ("eager", "fp32"): 0.0,
    ("eager-cached", "fp32"): 2e-5,
    ("sdpa", "fp32"): 2e-5,
    ("sdpa-cached", "fp32"): 2e-5,
    ("eager", "bf16"): 0.0,
    ("eager-cached", "bf16"): 0.0,
    ("sdpa", "bf16"): 0.25,
    ("sdpa-cached", "bf16"): 0.25,
}


def tolerance(path: str, precision_name: str) -> float:
    return TOLERANCE[(path, "fp32" if precision_name == "fp32" else "bf16")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """make_folder(**overrides), each folder saved once per module."""
    root = tmp_path_factory.mktemp("mosaic")
    made = {}

    def get(layout="safetensors", **overrides):
        key = (layout, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = make_folder(root / str(len(made)), layout, **overrides)
        return made[key]

    return get


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded-safetensors", "sharded-bin"])
def test_weights_are_read_from_every_layout_without_running_the_folder_code(saved, layout):
    folder, config, weights = saved(layout)
    model = load_causal_lm(str(folder), dtype=torch.float32, trust_remote_code=True)
    assert isinstance(model, MptForCausalLM) and not model.training
    state = model.state_dict()
    for key, value in weights.items():
        native = key
        for old, new in NATIVE_NAMES.items():
            native = native.replace(old, new)
        assert torch.equal(state[native], value), key
    assert (
        state["lm_head.weight"] is not None and model.lm_head.weight is model.transformer.wte.weight
    )
    ids, mask = prompts()
    real = mask.bool()  # (padding positions attend to padding only: no defined output)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits[real]
        assert torch.equal(ours, oracle.logits(config, weights, ids, mask)[real])
    assert not (folder / "REMOTE_CODE_RAN").exists()


@pytest.mark.parametrize("name", ["fp32", "bf16", "bf16-gpu-norms"])
@pytest.mark.parametrize("qk_ln", [True, False])
def test_logits_equal_mosaic_gpt_on_every_attention_path(saved, qk_ln, name):
    folder, config, weights = saved(attn_qk_ln=qk_ln)
    ids, mask = prompts()
    real = mask.bool()
    with torch.no_grad(), precision(name):
        expected = oracle.logits(config, weights, ids, mask).float()
        for path, model in paths(load_causal_lm(str(folder), dtype=torch.float32)).items():
            ours = model(ids, attention_mask=mask).logits.float()
            difference = (ours - expected)[real].abs().max().item()
            assert difference <= tolerance(path, name), (path, difference)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("name", ["fp32", "bf16", "bf16-gpu-norms"])
@pytest.mark.parametrize("qk_ln", [True, False])
def test_cached_decoding_logits_equal_mosaic_gpt(saved, qk_ln, name, cache):
    """Each decoding step's logits (KV cache, prompt once) equal MosaicGPT's whole-sequence ones."""
    folder, config, weights = saved(attn_qk_ln=qk_ln)
    ids, mask = prompts()
    settings = dict(max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0)
    if cache == "static":
        settings["cache_implementation"] = "static"
    for path, model in paths(load_causal_lm(str(folder), dtype=torch.float32)).items():
        with torch.no_grad(), precision(name):
            out = model.generate(
                ids,
                attention_mask=mask,
                return_dict_in_generate=True,
                output_logits=True,
                **settings,
            )
            full_mask = torch.cat([mask, torch.ones(len(PADDING), NEW_TOKENS, dtype=mask.dtype)], 1)
            expected = oracle.logits(config, weights, out.sequences, full_mask).float()
        for step, step_logits in enumerate(out.logits):
            difference = (step_logits.float() - expected[:, ids.shape[1] - 1 + step]).abs().max()
            assert difference <= tolerance(f"{path}-cached", name), (path, step, difference)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("qk_ln", [True, False])
def test_generated_tokens_equal_mosaic_gpt(saved, qk_ln, num_beams):
    folder, config, weights = saved(attn_qk_ln=qk_ln)
    ids, mask = prompts()
    if num_beams == 1:
        expected = oracle.greedy(config, weights, ids, mask, NEW_TOKENS)
    else:
        expected = oracle.beam_search(config, weights, ids, mask, num_beams, NEW_TOKENS)
    settings = dict(max_new_tokens=NEW_TOKENS, num_beams=num_beams, do_sample=False, pad_token_id=0)
    for path, model in paths(load_causal_lm(str(folder), dtype=torch.float32)).items():
        for cache in ("dynamic", "static"):
            out = model.generate(ids, attention_mask=mask, cache_implementation=cache, **settings)
            assert torch.equal(out, expected), (path, cache)


def test_qk_layernorm_is_applied_on_every_path(saved):
    """Perturbing q_ln's weights moves every path's logits: QK-LayerNorm is not dropped."""
    folder, config, weights = saved()
    perturbed = copy.deepcopy(weights)
    perturbed["transformer.blocks.0.attn.q_ln.weight"] *= 3
    other = oracle.save_folder(folder.parent / "perturbed", config, perturbed)
    ids, mask = prompts()
    real = mask.bool()
    settings = dict(max_new_tokens=2, do_sample=False, use_cache=True, pad_token_id=0)
    a, b = (paths(load_causal_lm(str(f), dtype=torch.float32)) for f in (folder, other))
    with torch.no_grad():
        for path in a:
            moved = (
                a[path](ids, attention_mask=mask).logits - b[path](ids, attention_mask=mask).logits
            )
            assert moved[real].abs().max() > 0.1, path
            steps = [
                m.generate(
                    ids,
                    attention_mask=mask,
                    return_dict_in_generate=True,
                    output_logits=True,
                    **settings,
                ).logits[-1]
                for m in (a[path], b[path])
            ]
            assert (steps[0] - steps[1]).abs().max() > 0.1, path
    assert "transformer.blocks.1.attn.k_ln.weight" in a["eager"].state_dict()


def test_low_precision_layernorm_normalises_in_bfloat16_under_gpu_autocast(saved):
    """With CUDA autocast's flag the LayerNorms run in bfloat16 (not under CPU autocast alone,
    as MosaicML's LPLayerNorm decides), and the converted model follows the oracle there."""
    folder, config, weights = saved()
    model = load_causal_lm(str(folder), dtype=torch.float32)
    ids, mask = prompts()
    with torch.no_grad(), precision("bf16"):
        cpu_autocast = model(ids, attention_mask=mask).logits
    with torch.no_grad(), precision("bf16-gpu-norms"):
        gpu_norms = model(ids, attention_mask=mask).logits
    assert not torch.equal(cpu_autocast, gpu_norms)
    plain = load_causal_lm(
        str(
            oracle.save_folder(
                folder.parent / "plain", {**config, "low_precision_layernorm": False}, weights
            )
        ),
        dtype=torch.float32,
    )
    with torch.no_grad(), precision("bf16-gpu-norms"):
        assert not torch.equal(plain(ids, attention_mask=mask).logits, gpu_norms)
        assert torch.equal(plain(ids, attention_mask=mask).logits, cpu_autocast)


def test_flamingo_with_closed_gates_is_mosaic_gpt(saved, byte_tokenizer_dir):
    """create_model_and_transforms on a MosaicGPT folder (no trust_remote_code): the Flamingo's
    logits and tokens with closed gates are MosaicGPT's."""
    folder, config, weights = saved()
    torch.manual_seed(0)
    model, _, tokenizer = create_model_and_transforms(
        VISION_ENCODER, None, str(folder), str(byte_tokenizer_dir), use_local_files=True
    )
    model.eval()
    assert len(tokenizer) == config["vocab_size"]
    tokenizer.padding_side = "left"
    batch = tokenizer(
        ["<image>a cat<|endofchunk|><image>a", "<image>x"], return_tensors="pt", padding=True
    )
    vision = torch.randn(2, 2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    real = batch.attention_mask.bool()
    with torch.no_grad():
        ours = model(vision, batch.input_ids, attention_mask=batch.attention_mask).logits
        expected = oracle.logits(config, weights, batch.input_ids, batch.attention_mask)
    assert (ours - expected)[real].abs().max() <= TOLERANCE[("sdpa", "fp32")]
    for num_beams in (1, 3):
        out = model.generate(
            vision,
            batch.input_ids,
            batch.attention_mask,
            max_new_tokens=NEW_TOKENS,
            num_beams=num_beams,
            eos_token_id=None,
            pad_token_id=0,
        )
        search = oracle.greedy if num_beams == 1 else oracle.beam_search
        args = () if num_beams == 1 else (num_beams,)
        assert torch.equal(
            out, search(config, weights, batch.input_ids, batch.attention_mask, *args, NEW_TOKENS)
        )
    assert not (folder / "REMOTE_CODE_RAN").exists()


@pytest.mark.parametrize(
    "key, value",
    [
        ("prefix_lm", True),
        ("attn_uses_sequence_id", True),
        ("logit_scale", 0.5),
        ("logit_scale", "inv_sqrt_d_model"),
        ("embedding_fraction", 0.1),
        ("alibi", False),
        ("alibi_bias_max", 16),
        ("n_heads", 8 - 2),
        ("mlp_ratio", 2),
        ("no_bias", False),
        ("emb_pdrop", 0.1),
        ("resid_pdrop", 0.1),
        ("attn_pdrop", 0.1),
        ("norm_type", "rmsnorm"),
    ],
)
def test_settings_the_port_cannot_reproduce_are_refused_before_the_weights(tmp_path, key, value):
    folder = oracle.save_folder(tmp_path, oracle.tiny_config(**{key: value}), weights=None)
    with pytest.raises(ValueError, match=f"{key}={value!r}: ") as error:
        load_causal_lm(str(folder))  # no weights: refused from config.json alone
    assert "MosaicGPT" in str(error.value)


def test_every_refused_setting_is_named_at_once(tmp_path):
    config = oracle.tiny_config(prefix_lm=True, logit_scale=2.0, embedding_fraction=0.5)
    with pytest.raises(ValueError) as error:
        load_causal_lm(str(oracle.save_folder(tmp_path, config, weights=None)))
    for setting in ("prefix_lm=True", "logit_scale=2.0", "embedding_fraction=0.5"):
        assert setting in str(error.value)


def test_weights_that_do_not_fit_are_named(tmp_path):
    config = oracle.tiny_config()
    weights = oracle.random_weights(config)
    weights["transformer.wpe.weight"] = torch.zeros(64, 64)
    del weights["transformer.blocks.1.attn.k_ln.weight"]
    weights["transformer.blocks.0.attn.Wqkv.weight"] = torch.zeros(3, 64)
    with pytest.raises(ValueError) as error:
        load_causal_lm(str(oracle.save_folder(tmp_path, config, weights)))
    message = str(error.value)
    assert "missing: transformer.blocks.1.attn.k_ln.weight" in message
    assert "unexpected: transformer.wpe.weight" in message
    assert "transformer.blocks.0.attn.Wqkv.weight (3, 64) (the model's: (192, 64))" in message


def test_a_folder_without_weights_says_so(tmp_path):
    folder = oracle.save_folder(tmp_path, oracle.tiny_config(), weights=None)
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        load_causal_lm(str(folder))


def test_dtype_auto_is_the_configs_and_explicit_dtypes_are_kept(tmp_path):
    folder, _, _ = make_folder(tmp_path, torch_dtype="bfloat16")
    assert load_causal_lm(str(folder)).dtype == torch.bfloat16
    assert load_causal_lm(str(folder), dtype="float32").dtype == torch.float32
    assert load_causal_lm(str(folder), torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="cannot apply attn_implementation"):
        load_causal_lm(str(folder), attn_implementation="flash_attention_2")


def test_device_map_places_the_converted_model(tmp_path):
    folder, _, _ = make_folder(tmp_path)
    plain = load_causal_lm(str(folder), dtype=torch.float32)
    placed = load_causal_lm(str(folder), dtype=torch.float32, device_map="auto")
    # accelerate's fit on a machine without GPUs: one device, so no map is recorded
    assert not hasattr(placed, "hf_device_map") and placed.device == torch.device("cpu")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert torch.equal(placed(ids).logits, plain(ids).logits)
    with pytest.raises(ValueError, match="splits the model over devices is not supported"):
        load_causal_lm(str(folder), device_map={"transformer": "cpu", "lm_head": "cpu"})


def test_a_converted_model_saved_natively_loads_back_the_same(saved, tmp_path):
    folder, config, weights = saved()
    model = load_causal_lm(str(folder), dtype=torch.float32)
    model.save_pretrained(tmp_path / "native")
    assert json.loads((tmp_path / "native" / "config.json").read_text())["model_type"] == "mpt"
    again = load_causal_lm(str(tmp_path / "native"))
    ids, mask = prompts()
    with torch.no_grad(), precision("bf16-gpu-norms"):
        assert torch.equal(
            again(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
        )


def test_a_hub_id_resolves_through_the_hugging_face_cache(saved, tmp_path):
    folder, config, weights = saved()
    repo = tmp_path / "models--anas-awadalla--tiny-mosaic"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    model = load_causal_lm(
        "anas-awadalla/tiny-mosaic",
        cache_dir=str(tmp_path),
        local_files_only=True,
        dtype=torch.float32,
    )
    ids, mask = prompts()
    real = mask.bool()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits[real]
        assert torch.equal(ours, oracle.logits(config, weights, ids, mask)[real])


# ----------------------------------------------------------------------------- llm-foundry MPT
def llm_foundry_config(**attn_overrides) -> dict:
    """MPT-7B's published config.json (llm-foundry remote code), at tiny size."""
    return {
        "architectures": ["MPTForCausalLM"],
        "attn_config": {
            "alibi": True,
            "alibi_bias_max": 8,
            "attn_impl": "torch",
            "attn_pdrop": 0,
            "attn_type": "multihead_attention",
            "attn_uses_sequence_id": False,
            "clip_qkv": None,
            "prefix_lm": False,
            "qk_ln": False,
            "softmax_scale": None,
            **attn_overrides,
        },
        "auto_map": {
            "AutoConfig": "configuration_mpt.MPTConfig",
            "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM",
        },
        "d_model": 64,
        "emb_pdrop": 0,
        "embedding_fraction": 1.0,
        "expansion_ratio": 4,
        "init_config": {
            "emb_init_std": None,
            "emb_init_uniform_lim": None,
            "fan_mode": "fan_in",
            "init_div_is_residual": True,
            "init_gain": 0,
            "init_nonlinearity": "relu",
            "init_std": 0.02,
            "name": "kaiming_normal_",
            "verbose": 0,
        },
        "init_device": "cpu",
        "learned_pos_emb": True,
        "logit_scale": None,
        "max_seq_len": 64,
        "model_type": "mpt",
        "n_heads": 4,
        "n_layers": 2,
        "no_bias": True,
        "norm_type": "low_precision_layernorm",
        "resid_pdrop": 0,
        "tokenizer_name": "EleutherAI/gpt-neox-20b",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.28.1",
        "use_cache": False,
        "verbose": 0,
        "vocab_size": 260,
    }


def save_llm_foundry(folder, qk_ln: bool, **attn_overrides):
    """A tiny MPT-7B-style folder (sharded .bin, remote code that must not run) holding the
    oracle's weights under MPT's names. Returns (folder, oracle config, oracle weights)."""
    mosaic = oracle.tiny_config(attn_qk_ln=qk_ln)
    weights = oracle.random_weights(mosaic)
    native = {}
    for key, value in weights.items():
        for old, new in NATIVE_NAMES.items():
            key = key.replace(old, new)
        native[key] = value
    config = llm_foundry_config(qk_ln=qk_ln, **attn_overrides)
    return oracle.save_folder(folder, config, native, "sharded-bin"), mosaic, weights


@pytest.mark.parametrize("qk_ln", [False, True])
def test_llm_foundry_mpt_loads_natively_and_equals_mosaicml_numerics(tmp_path, qk_ln):
    folder, mosaic, weights = save_llm_foundry(tmp_path / "mpt", qk_ln)
    model = load_causal_lm(str(folder), dtype=torch.float32)  # trust_remote_code not needed
    ids, mask = prompts()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        real = mask.bool()
        assert torch.equal(ours[real], oracle.logits(mosaic, weights, ids, mask)[real])
        if not qk_ln:  # transformers' own class on the same folder: the same numbers
            native = MptForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            assert torch.equal(ours, native(ids, attention_mask=mask).logits)
    assert model.config.attn_config.qk_ln is qk_ln and "auto_map" not in model.config.to_dict()
    assert not (folder / "REMOTE_CODE_RAN").exists()


@pytest.mark.parametrize(
    "key, value",
    [
        ("prefix_lm", True),
        ("attn_uses_sequence_id", True),
        ("alibi", False),
        ("alibi_bias_max", 16),
        ("attn_type", "grouped_query_attention"),
        ("rope", True),
    ],
)
def test_llm_foundry_settings_transformers_would_ignore_are_refused(tmp_path, key, value):
    config = llm_foundry_config(**{key: value})
    folder = oracle.save_folder(tmp_path, config, weights=None)
    with pytest.raises(ValueError, match=f"attn_config.{key}={value!r}: "):
        load_causal_lm(str(folder))


@pytest.mark.parametrize(
    "key, value",
    [
        ("logit_scale", 0.5),
        ("embedding_fraction", 0.5),
        ("norm_type", "rmsnorm"),
        ("emb_pdrop", 0.1),
    ],
)
def test_llm_foundry_top_level_settings_are_refused(tmp_path, key, value):
    folder = oracle.save_folder(tmp_path, {**llm_foundry_config(), key: value}, weights=None)
    with pytest.raises(ValueError, match=f"{key}={value!r}: "):
        load_causal_lm(str(folder))


def test_transformers_own_mpt_folders_load_as_before(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_lm("mpt", tmp_path / "mpt")
    ids, mask = prompts()
    with torch.no_grad():
        ours = load_causal_lm(str(folder), dtype=torch.float32)(ids, attention_mask=mask).logits
        theirs = (
            AutoModelForCausalLM.from_pretrained(folder).eval()(ids, attention_mask=mask).logits
        )
    assert torch.equal(ours, theirs)
    llama = load_causal_lm(str(save_tiny_lm("llama", tmp_path / "llama")))
    assert type(llama).__name__ == "LlamaForCausalLM"


# ------------------------------------------------------------------ the CLIs users run it from
def test_train_omnicorpus_trains_on_a_mosaic_gpt_lm_path(saved, byte_tokenizer_dir, tmp_path):
    from open_flamingo.data.synthetic import write_synthetic_corpus
    from open_flamingo.train.train_omnicorpus import main

    folder, _, _ = saved()
    corpus = tmp_path / "corpus"
    write_synthetic_corpus(str(corpus), num_docs=4, num_pairs=4, num_eval=0, image_size=64)
    flags = {
        "lm_path": folder,
        "tokenizer_path": byte_tokenizer_dir,
        "vision_encoder_path": VISION_ENCODER,
        "vision_encoder_pretrained": "none",
        "omnicorpus_shards": corpus / "interleaved",
        "omnicorpus_image_prefix": corpus / "images",
        "laion_shards": corpus / "pairs",
        "batch_size_interleaved": 2,
        "batch_size_laion": 2,
        "max_tokens_interleaved": 64,
        "max_tokens_laion": 32,
        "train_num_samples_interleaved": 2,
        "train_num_samples_laion": 2,
        "precision": "fp32",
        "workers": 0,
        "external_save_dir": tmp_path,
        "run_name": "run",
        "warmup_steps": 1,
        "num_epochs": 1,
    }
    main([part for key, value in flags.items() for part in (f"--{key}", str(value))])
    saved_weights = torch.load(
        tmp_path / "run" / "checkpoint-1" / "checkpoint.pt", weights_only=True
    )
    assert all(torch.isfinite(t).all() for t in saved_weights.values())  # one step was taken
    assert not (folder / "REMOTE_CODE_RAN").exists()


def test_the_eval_cli_builds_on_a_mosaic_gpt_lm_path(saved, byte_tokenizer_dir):
    from open_flamingo.eval.args import parse_args
    from open_flamingo.eval.eval_model import EvalModel

    folder, config, weights = saved()
    args = parse_args(
        [
            "--vision_encoder_path", VISION_ENCODER,
            "--vision_encoder_pretrained", "none",
            "--lm_path", str(folder),
            "--lm_tokenizer_path", str(byte_tokenizer_dir),
            "--precision", "fp32",
            "--eval_coco",
            "--coco_train_image_dir_path", str(folder),
            "--coco_val_image_dir_path", str(folder),
            "--coco_karpathy_json_path", str(folder / "config.json"),
            "--coco_annotations_json_path", str(folder / "config.json"),
        ]
    )  # fmt: skip
    lm = EvalModel.from_args(args, device=torch.device("cpu")).model.lang_encoder
    assert isinstance(lm, MptForCausalLM)
    first = next(
        m for name, m in lm.named_modules() if name.endswith("attn") and hasattr(m, "q_ln")
    )
    assert torch.equal(first.q_ln.weight, weights["transformer.blocks.0.attn.q_ln.weight"])

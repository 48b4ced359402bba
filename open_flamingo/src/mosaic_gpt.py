"""MosaicGPT and llm-foundry MPT folders, loaded as transformers' own `MptForCausalLM`.

The released OpenFlamingo-3B's LM, `anas-awadalla/mpt-1b-redpajama-200b`, is MosaicML's remote
code "MosaicGPT" (`model_type: mosaic_gpt`), and the 9B's MPT-7B is llm-foundry remote code
(`model_type: mpt` with an `auto_map`). Neither runs on transformers 5. Their weights do fit
transformers' native MPT:

* MosaicGPT: the config maps onto `MptConfig` (`mpt_config_from_mosaic_gpt`) and the keys are
  renamed (`mosaic_gpt_key`: ln_1 -> norm_1, ln_2 -> norm_2, mlp.mlp_up -> ffn.up_proj,
  mlp.mlp_down -> ffn.down_proj, transformer.ln_f -> transformer.norm_f);
* llm-foundry MPT: config and keys are already the native ones (`mpt_config`);
* both: QK-LayerNorm and the low-precision LayerNorm, which the native class ignores, are added
  (mpt_norms.py), and settings it would silently ignore are refused up front, each named with
  its value and why.

`load_causal_lm` is what create_model_and_transforms calls for the LM: these two families go
through here, without `trust_remote_code` and without running any file of the folder; every
other model goes to `AutoModelForCausalLM.from_pretrained`. The weights of the folder are read
from `.safetensors` or `.bin` files (sharded or not, weights only) and must fit exactly: a
missing, unexpected or misshapen key is an error that names it.
"""

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, MptConfig, MptForCausalLM
from transformers.utils.hub import cached_file

from .mpt_configs import (
    COMMON_RULES,
    NATIVE_CLASS,
    is_whole,
    lookup,
    mpt_config,
    refuse_unsupported,
)
from .mpt_norms import NORM_TYPES, apply_mpt_norms
from .weight_files import read_weights

logger = logging.getLogger(__name__)

# Hugging Face arguments that locate files; the others of `from_pretrained` need the real thing.
HUB_KWARGS = ("cache_dir", "local_files_only", "revision", "token", "force_download", "subfolder")

# MosaicGPTConfig's defaults, which apply to keys its config.json lacks.
MOSAIC_GPT_DEFAULTS = {
    "d_model": 2048,
    "n_heads": 16,
    "n_layers": 24,
    "mlp_ratio": 4,
    "max_seq_len": 2048,
    "vocab_size": 50368,
    "attn_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "emb_pdrop": 0.0,
    "attn_qk_ln": False,
    "attn_clip_qkv": None,
    "softmax_scale": None,
    "prefix_lm": False,
    "attn_uses_sequence_id": False,
    "alibi": False,
    "alibi_bias_max": 8,
    "logit_scale": None,
    "no_bias": False,
    "embedding_fraction": 1.0,
    "low_precision_layernorm": False,
}


def _power_of_two(n) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


MOSAIC_GPT_RULES = (
    *COMMON_RULES,
    ("prefix_lm", False, lambda v, c: not v, f"prefix-LM attention; {NATIVE_CLASS} is causal"),
    (
        "attn_uses_sequence_id",
        False,
        lambda v, c: not v,
        f"attention within sequence ids; {NATIVE_CLASS} has none",
    ),
    (
        "alibi",
        False,
        lambda v, c: bool(v),
        f"MosaicGPT then adds learned position embeddings (transformer.wpe); {NATIVE_CLASS} has "
        "none and always applies ALiBi",
    ),
    (
        "alibi_bias_max",
        8,
        lambda v, c: v == 8,
        f"{NATIVE_CLASS} always uses the ALiBi slopes of alibi_bias_max=8",
    ),
    (
        "n_heads",
        16,
        lambda v, c: _power_of_two(v),
        f"MosaicGPT's ALiBi slopes differ from {NATIVE_CLASS}'s unless the head count is a "
        "power of two",
    ),
    ("mlp_ratio", 4, lambda v, c: v == 4, f"{NATIVE_CLASS}'s MLP is always 4 x d_model wide"),
    ("no_bias", False, lambda v, c: v is True, f"the model has biases; {NATIVE_CLASS} has none"),
    (
        "attn_pdrop",
        0.0,
        lambda v, c: is_whole(v),
        "transformers' MptConfig takes an integer attention dropout only",
    ),
    (
        "resid_pdrop",
        0.0,
        lambda v, c: v == lookup(c, "attn_pdrop", 0.0),
        f"{NATIVE_CLASS} applies attn_pdrop to the residual branches",
    ),
    (
        "norm_type",
        "layernorm",
        lambda v, c: v in NORM_TYPES,
        f"{NATIVE_CLASS} has LayerNorms only",
    ),
)


def mpt_config_from_mosaic_gpt(raw: dict, source: str = "config.json") -> MptConfig:
    """transformers' MptConfig of a MosaicGPT config.json (dict). Raises ValueError for the
    settings the native class cannot reproduce (MOSAIC_GPT_RULES)."""
    refuse_unsupported(raw, MOSAIC_GPT_RULES, "MosaicGPT", source)
    setting = {**MOSAIC_GPT_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    # some MosaicGPT versions choose the LayerNorm with `norm_type`, others with the flag
    low_precision = raw.get("norm_type") == "low_precision_layernorm" or (
        "norm_type" not in raw and bool(setting["low_precision_layernorm"])
    )
    clip = raw.get("attn_clip_qkv")
    scale = raw.get("softmax_scale")
    config = MptConfig(
        d_model=setting["d_model"],
        n_heads=setting["n_heads"],
        n_layers=setting["n_layers"],
        expansion_ratio=setting["mlp_ratio"],
        max_seq_len=setting["max_seq_len"],
        vocab_size=setting["vocab_size"],
        resid_pdrop=float(setting["resid_pdrop"]),
        emb_pdrop=0.0,
        learned_pos_emb=False,
        attn_config={
            "alibi": True,
            "alibi_bias_max": 8,
            "clip_qkv": None if clip is None else float(clip),
            "softmax_scale": None if scale is None else float(scale),
            "qk_ln": bool(setting["attn_qk_ln"]),
            "attn_pdrop": int(setting["attn_pdrop"]),
        },
        no_bias=True,
        layer_norm_epsilon=1e-5,
        norm_type="low_precision_layernorm" if low_precision else "layernorm",
        tie_word_embeddings=True,
        use_cache=bool(raw.get("use_cache")),  # off unless asked, as in transformers' MPT
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
    )
    config.architectures = ["MptForCausalLM"]
    return config


def mosaic_gpt_key(key: str) -> str:
    """A MosaicGPT state-dict key as transformers' MPT names it (q_ln / k_ln unchanged)."""
    for old, new in (
        ("transformer.ln_f.", "transformer.norm_f."),
        (".ln_1.", ".norm_1."),
        (".ln_2.", ".norm_2."),
        (".mlp.mlp_up.", ".ffn.up_proj."),
        (".mlp.mlp_down.", ".ffn.down_proj."),
    ):
        key = key.replace(old, new)
    return key


def build_mpt(config: MptConfig, state: dict[str, torch.Tensor], source: str) -> MptForCausalLM:
    """MptForCausalLM of `config` (with its QK-LayerNorm / low-precision LayerNorm) holding the
    tensors of `state` (in their dtype), in eval mode. Every key must fit: raises ValueError
    naming the missing, unexpected and misshapen ones."""
    with torch.device("meta"):
        model = MptForCausalLM(config)
    apply_mpt_norms(model)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    if model.lm_head.weight is model.transformer.wte.weight:  # tied: saved as the embedding
        del expected["lm_head.weight"]
    problems = []
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshapen = [
        f"{key} {tuple(state[key].shape)} (the model's: {tuple(expected[key])})"
        for key in sorted(expected.keys() & state.keys())
        if state[key].shape != expected[key]
    ]
    for what, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", misshapen),
    ):
        if keys:
            problems.append(f"{what}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    if problems:
        raise ValueError(
            f"{source}: the weights do not fit {NATIVE_CLASS} built from its config.json ("
            + "; ".join(problems)
            + f"). {NATIVE_CLASS} has no biases, no learned position embeddings (transformer.wpe) "
            "and an MLP 4 x d_model wide; check that the config belongs to these weights."
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def _dtype(kwargs: dict, raw: dict) -> torch.dtype | None:
    """The dtype asked for with `dtype` / `torch_dtype` (as `from_pretrained` takes it; "auto",
    the default, is the config's), or None for the dtype of the weights themselves."""
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if dtype is None or dtype == "auto":
        dtype = raw.get("dtype", raw.get("torch_dtype"))
        if dtype is None:
            return None
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r}: pass a torch.dtype, its name or 'auto'.")
    return dtype


def place(model, device_map, source: str):
    """`device_map` for a model built here: one device ("cuda:0", a torch.device), or "auto",
    which is the first GPU if there is one, else the CPU. The converted MPT is not split over
    several devices (OpenFlamingo's MPT LMs, 1B and 7B, fit on one GPU): a dict is refused."""
    if isinstance(device_map, dict):
        raise ValueError(
            f"{source}: a device_map that splits the model over devices is not supported for "
            "MosaicGPT / MPT, which are built here rather than by from_pretrained; pass one "
            'device, or "auto" (the first GPU, else the CPU)'
        )
    if device_map == "auto":
        device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    return model.to(device_map)


def load_causal_lm(path: str, **kwargs):
    """The causal LM at `path` (a Hugging Face id or folder, or a `.gguf` file), as
    `AutoModelForCausalLM.from_pretrained(path, **kwargs)` loads it, except that MosaicGPT and
    MPT folders (see the module docstring) become transformers' `MptForCausalLM` here.

    kwargs: `from_pretrained`'s. For MosaicGPT and MPT: `dtype` (or `torch_dtype`; default
    "auto", the config's dtype, as transformers 5 does) and the arguments that locate files
    (HUB_KWARGS), and `device_map` as one device (`place`); `trust_remote_code` is not needed
    and changes nothing. Raises ValueError for
    other arguments there, for settings transformers' MPT cannot reproduce and for weights that
    do not fit; FileNotFoundError when the folder holds no weights.
    """
    path = str(path)
    if path.endswith(".gguf") and Path(path).is_file():
        return AutoModelForCausalLM.from_pretrained(
            str(Path(path).parent), gguf_file=Path(path).name, **kwargs
        )
    hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
    config_file = cached_file(
        path,
        "config.json",
        **hub,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    raw = json.loads(Path(config_file).read_text()) if config_file else {}
    family = raw.get("model_type")
    if family not in ("mosaic_gpt", "mpt"):
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    understood = {*HUB_KWARGS, "dtype", "torch_dtype", "trust_remote_code", "device_map"}
    others = sorted(kwargs.keys() - understood)
    if others:
        raise ValueError(
            f"{path} is a {family} model, loaded here as transformers' MptForCausalLM without "
            f"from_pretrained, which cannot apply {', '.join(others)}. Load it without them and "
            "adjust the model afterwards (e.g. `.to(device)`)."
        )
    if family == "mosaic_gpt":
        config, rename = mpt_config_from_mosaic_gpt(raw, path), mosaic_gpt_key
    else:
        config, rename = mpt_config(raw, path), None
    dtype = _dtype(kwargs, raw)
    state = {}
    for key, tensor in read_weights(path, hub):
        if tensor.is_floating_point():
            dtype = dtype or tensor.dtype  # "auto" without a config dtype: the weights' own
            tensor = tensor.to(dtype)
        state[rename(key) if rename else key] = tensor
    model = build_mpt(config, state, path)
    model.config.dtype = dtype
    model.config.name_or_path = path
    generation_file = cached_file(
        path, "generation_config.json", **hub, _raise_exceptions_for_missing_entries=False
    )
    if generation_file:
        model.generation_config = GenerationConfig.from_pretrained(Path(generation_file).parent)
    if kwargs.get("device_map") is not None:
        model = place(model, kwargs["device_map"], path)
    logger.info(
        "%s (%s) loaded as MptForCausalLM without its remote code: QK-LayerNorm %s, %s.",
        path,
        family,
        "on" if config.attn_config.qk_ln else "off",
        config.norm_type,
    )
    return model

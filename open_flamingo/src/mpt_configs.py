"""MPT config.json files (llm-foundry's and transformers') as transformers' `MptConfig`.

transformers' `MptForCausalLM` reads an MPT config and silently ignores much of it: prefix-LM
and sequence-id attention, `logit_scale`, `embedding_fraction`, `alibi: false`, other ALiBi
slopes, other attention types, norms, activations and position schemes of later llm-foundry
versions. Run anyway, such a model computes something else. `refuse_unsupported` names each
such setting of a config, with its value and what it would change (`MPT_RULES` for MPT configs;
mosaic_gpt.py has MosaicGPT's), before any weight is read. Two settings it ignores are
reproduced instead (mpt_norms.py): QK-LayerNorm and the low-precision LayerNorm.
"""

from transformers import MptConfig

from .mpt_norms import NORM_TYPES

NATIVE_CLASS = "transformers' MPT"


def is_whole(value) -> bool:
    """A number without a fractional part (JSON may write 0 as 0.0)."""
    return float(value).is_integer()


# (key in config.json, the value when absent, allowed(value, config), what goes wrong otherwise)
COMMON_RULES = (
    ("logit_scale", None, lambda v, c: v is None, f"it scales the logits; {NATIVE_CLASS} does not"),
    (
        "embedding_fraction",
        1.0,
        lambda v, c: v == 1,
        f"it scales the embeddings' gradient; {NATIVE_CLASS} does not",
    ),
    ("emb_pdrop", 0.0, lambda v, c: v == 0, f"embedding dropout; {NATIVE_CLASS} has none"),
)
MPT_RULES = (
    *COMMON_RULES,
    ("attn_config.prefix_lm", False, lambda v, c: not v, f"{NATIVE_CLASS} is causal"),
    (
        "attn_config.attn_uses_sequence_id",
        False,
        lambda v, c: not v,
        f"attention within sequence ids; {NATIVE_CLASS} has none",
    ),
    (
        "attn_config.alibi",
        True,
        lambda v, c: bool(v),
        f"the model then needs position embeddings; {NATIVE_CLASS} always applies ALiBi",
    ),
    (
        "attn_config.alibi_bias_max",
        8,
        lambda v, c: v == 8,
        f"{NATIVE_CLASS} always uses the ALiBi slopes of alibi_bias_max=8",
    ),
    (
        "attn_config.attn_type",
        "multihead_attention",
        lambda v, c: v == "multihead_attention",
        f"{NATIVE_CLASS} has multi-head attention only",
    ),
    (
        "attn_config.attn_pdrop",
        0,
        lambda v, c: is_whole(v),
        "transformers' MptConfig takes an integer attention dropout only",
    ),
    (
        "resid_pdrop",
        0.0,
        lambda v, c: v == lookup(c, "attn_config.attn_pdrop", 0),
        f"{NATIVE_CLASS} applies attn_config.attn_pdrop to the residual branches",
    ),
    (
        "norm_type",
        "low_precision_layernorm",
        lambda v, c: v in NORM_TYPES,
        f"{NATIVE_CLASS} has LayerNorms only",
    ),
    ("attn_config.qk_gn", False, lambda v, c: not v, f"{NATIVE_CLASS} has no QK-GroupNorm"),
    ("attn_config.rope", False, lambda v, c: not v, f"{NATIVE_CLASS} has no rotary embedding"),
    (
        "attn_config.sliding_window_size",
        -1,
        lambda v, c: v == -1,
        f"{NATIVE_CLASS} has no sliding-window attention",
    ),
    (
        "attn_config.attn_logit_softcapping",
        None,
        lambda v, c: v is None,
        f"{NATIVE_CLASS} does not cap the attention logits",
    ),
    (
        "final_logit_softcapping",
        None,
        lambda v, c: v is None,
        f"{NATIVE_CLASS} does not cap the logits",
    ),
    (
        "ffn_config.ffn_type",
        "mptmlp",
        lambda v, c: v == "mptmlp",
        f"{NATIVE_CLASS}'s MLP is MPT's GELU MLP",
    ),
    (
        "ffn_config.ffn_act_fn",
        None,
        lambda v, c: v is None or (v.get("name"), v.get("approximate", "none")) == ("gelu", "none"),
        f"{NATIVE_CLASS}'s MLP uses the exact GELU",
    ),
)


def lookup(config: dict, key: str, default):
    """config["a"]["b"] for key "a.b"; `default` where a level is missing or None."""
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return default
        value = value[part]
    return value


def refuse_unsupported(config: dict, rules, family: str, source: str) -> None:
    """Raise ValueError naming every setting of `config` (a config.json's dict) that `rules`
    refuse, with its value and what it would change; return otherwise."""
    found = []
    for key, default, allowed, why in rules:
        value = lookup(config, key, default)
        if not allowed(value, config):
            found.append(f"  {key}={value!r}: {why}")
    if found:
        raise ValueError(
            f"{source}: {family} settings that {NATIVE_CLASS} cannot reproduce, so that the "
            "model would compute something else:\n"
            + "\n".join(found)
            + f"\nThis loader runs such a model as {NATIVE_CLASS} (its own code does not run on "
            "transformers 5). Use a model without these settings."
        )


def mpt_config(raw: dict, source: str = "config.json") -> MptConfig:
    """transformers' MptConfig of an MPT config.json (dict; llm-foundry's or transformers'),
    without its `auto_map`. Raises ValueError for the settings the native class would ignore
    (MPT_RULES); QK-LayerNorm and the low-precision LayerNorm are kept (mpt_norms.py)."""
    refuse_unsupported(raw, MPT_RULES, "MPT", source)
    fields = {k: v for k, v in raw.items() if k != "auto_map"}
    attn = dict(fields.get("attn_config") or {})
    # transformers' types are strict where JSON is not (0.0 for an int, 8 for a float)
    for key, kind in (("attn_pdrop", int), ("alibi_bias_max", int), ("clip_qkv", float)):
        if attn.get(key) is not None:
            attn[key] = kind(attn[key])
    fields["attn_config"] = attn
    if fields.get("embedding_fraction") is not None:
        fields["embedding_fraction"] = float(fields["embedding_fraction"])
    config = MptConfig.from_dict(fields)
    config.architectures = ["MptForCausalLM"]
    return config

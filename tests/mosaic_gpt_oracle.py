"""An independent, plain re-implementation of MosaicGPT (MPT-1B-RedPajama's remote code), the
reference that open_flamingo/src/mosaic_gpt.py is tested against, and tiny MosaicGPT folders.

Written from the published architecture (../shared/notes/released-models.md and MosaicML's
template), in MosaicGPT's own parameter names, with torch only:

* x = wte[ids]; per block: x += out_proj(attn(ln_1(x))); x += mlp_down(gelu(mlp_up(ln_2(x))));
  logits = ln_f(x) @ wte.T (tied head);
* attention: qkv = Wqkv(x), clamped to +-attn_clip_qkv; with QK-LayerNorm q = q_ln(q),
  k = k_ln(k) over the full width before the head split; scores scaled by 1/sqrt(head dim),
  plus ALiBi relative to the last key (slope 2^(-8 (h+1) / n_heads)), finfo.min at padding keys,
  -inf above the diagonal; softmax; no biases anywhere (no_bias);
* LayerNorm eps 1e-5. With low_precision_layernorm every LayerNorm, QK-LayerNorm included (the
  template builds q_ln / k_ln with the same class as ln_1), is MosaicML's LPLayerNorm: when
  `torch.is_autocast_enabled()` (CUDA autocast) it normalises in the autocast dtype with
  autocast off, else it is a plain LayerNorm with autocast off.

The ops run in the template's order, so that under autocast they round as it does.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

EPS = 1e-5
# A remote-code file that must never run: it leaves a mark and fails.
REMOTE_CODE = """from pathlib import Path
(Path(__file__).parent / "REMOTE_CODE_RAN").write_text("executed")
raise RuntimeError("the folder's remote code was executed")
"""


def tiny_config(**overrides) -> dict:
    """A MosaicGPT config.json (dict) as its save_pretrained writes one, at tiny size."""
    config = {
        "architectures": ["MosaicGPT"],
        "auto_map": {
            "AutoConfig": "configuration_mosaic_gpt.MosaicGPTConfig",
            "AutoModelForCausalLM": "mosaic_gpt.MosaicGPT",
        },
        "model_type": "mosaic_gpt",
        "d_model": 64,
        "n_heads": 4,
        "n_layers": 2,
        "mlp_ratio": 4,
        "max_seq_len": 64,
        "vocab_size": 260,
        "attn_impl": "torch",
        "attn_pdrop": 0,
        "resid_pdrop": 0,
        "emb_pdrop": 0,
        "attn_qk_ln": True,
        "attn_clip_qkv": None,
        "softmax_scale": None,
        "prefix_lm": False,
        "attn_uses_sequence_id": False,
        "alibi": True,
        "alibi_bias_max": 8,
        "logit_scale": None,
        "no_bias": True,
        "embedding_fraction": 1.0,
        "low_precision_layernorm": True,
        "init_device": "cpu",
        "param_init_fn": "kaiming_normal_",
        "init_std": 0.02,
        "verbose": 0,
        "use_cache": False,
        "torch_dtype": "float32",
        "transformers_version": "4.27.4",
    }
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """MosaicGPT's state dict with random weights (LayerNorm weights around 1, not 1, so that
    a dropped LayerNorm shows)."""
    generator = torch.Generator().manual_seed(seed)
    d, ratio = config["d_model"], config["mlp_ratio"]

    def normal(*shape, std):
        return torch.randn(*shape, generator=generator) * std

    def norm_weight():
        return 1 + normal(d, std=0.3)

    weights = {"transformer.wte.weight": normal(config["vocab_size"], d, std=0.5)}
    for n in range(config["n_layers"]):
        block = f"transformer.blocks.{n}."
        weights[block + "ln_1.weight"] = norm_weight()
        weights[block + "attn.Wqkv.weight"] = normal(3 * d, d, std=d**-0.5)
        if config["attn_qk_ln"]:
            weights[block + "attn.q_ln.weight"] = norm_weight()
            weights[block + "attn.k_ln.weight"] = norm_weight()
        weights[block + "attn.out_proj.weight"] = normal(d, d, std=d**-0.5)
        weights[block + "ln_2.weight"] = norm_weight()
        weights[block + "mlp.mlp_up.weight"] = normal(ratio * d, d, std=d**-0.5)
        weights[block + "mlp.mlp_down.weight"] = normal(d, ratio * d, std=(ratio * d) ** -0.5)
    weights["transformer.ln_f.weight"] = norm_weight()
    return weights


def save_folder(folder: Path, config: dict, weights: dict | None, layout: str = "safetensors"):
    """Write a MosaicGPT folder: config.json, the remote-code files its auto_map names (which
    must never run: see REMOTE_CODE) and `weights` (None: none) in `layout`: "safetensors",
    "bin", "sharded-safetensors" or "sharded-bin" (two shards and an index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for entry in config.get("auto_map", {}).values():
        (folder / f"{entry.split('.')[0]}.py").write_text(REMOTE_CODE)
    if weights is None:
        return folder
    safetensors = layout.endswith("safetensors")
    base, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")

    def write(tensors: dict, name: str):
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        if safetensors:
            save_file(tensors, folder / name, metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / name)

    if not layout.startswith("sharded"):
        write(weights, f"{base}.{ext}")
        return folder
    keys = sorted(weights)
    weight_map = {}
    for index, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"{base}-{index + 1:05d}-of-00002.{ext}"
        write({k: weights[k] for k in part}, name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{base}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    return folder


def layer_norm(x: torch.Tensor, weight: torch.Tensor, low_precision: bool) -> torch.Tensor:
    """MosaicGPT's bias-free LayerNorm: nn.LayerNorm, or MosaicML's LPLayerNorm."""
    if not low_precision:
        return F.layer_norm(x, x.shape[-1:], weight, None, EPS)
    if torch.is_autocast_enabled():  # as LPLayerNorm asks: true under CUDA autocast only
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x, x.shape[-1:], weight, None, EPS)


def alibi(config: dict, keys: int, like: torch.Tensor) -> torch.Tensor:
    """(1, h, 1, keys) ALiBi relative to the last key, cut from the max_seq_len-wide table, in
    the dtype and on the device of `like`."""
    n_heads, width = config["n_heads"], config["max_seq_len"]
    options = dict(dtype=like.dtype, device=like.device)
    distance = torch.arange(1 - width, 1, **options).view(1, 1, 1, width)
    m = torch.arange(1, n_heads + 1, **options) * (config["alibi_bias_max"] / n_heads)
    return (distance * (1.0 / 2**m).view(1, n_heads, 1, 1))[..., -keys:]


def attention(config: dict, w: dict, block: str, x: torch.Tensor, bias: torch.Tensor):
    """x: (B, L, D), bias: (B | 1, h, 1, L) -> (B, L, D)."""
    batch, length, d = x.shape
    n_heads, low_precision = config["n_heads"], config["low_precision_layernorm"]
    qkv = F.linear(x, w[block + "attn.Wqkv.weight"])
    if config["attn_clip_qkv"]:
        qkv = qkv.clamp(min=-config["attn_clip_qkv"], max=config["attn_clip_qkv"])
    q, k, v = qkv.chunk(3, dim=2)
    if config["attn_qk_ln"]:
        q = layer_norm(q, w[block + "attn.q_ln.weight"], low_precision).to(qkv.dtype)
        k = layer_norm(k, w[block + "attn.k_ln.weight"], low_precision).to(qkv.dtype)
    q = q.view(batch, length, n_heads, -1).permute(0, 2, 1, 3)  # (B, h, L, d)
    k = k.view(batch, length, n_heads, -1).permute(0, 2, 3, 1)  # (B, h, d, L)
    v = v.view(batch, length, n_heads, -1).permute(0, 2, 1, 3)  # (B, h, L, d)
    scale = config["softmax_scale"] or 1 / math.sqrt(d / n_heads)
    scores = q.matmul(k) * scale + bias
    above = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
    scores = scores.masked_fill(above, -float("inf"))
    out = torch.softmax(scores, dim=-1).matmul(v)  # (B, h, L, d)
    out = out.permute(0, 2, 1, 3).reshape(batch, length, d)
    return F.linear(out, w[block + "attn.out_proj.weight"])


def logits(config: dict, w: dict, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """MosaicGPT's forward. input_ids, attention_mask: (B, L) (1 = token, 0 = padding).
    Returns (B, L, vocab) logits."""
    low_precision = config["low_precision_layernorm"]
    x = w["transformer.wte.weight"][input_ids]
    bias = alibi(config, input_ids.shape[1], x)
    if attention_mask is not None:
        padding = ~attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        bias = bias.masked_fill(padding, torch.finfo(x.dtype).min)
    for n in range(config["n_layers"]):
        block = f"transformer.blocks.{n}."
        x = x + attention(
            config, w, block, layer_norm(x, w[block + "ln_1.weight"], low_precision), bias
        )
        h = layer_norm(x, w[block + "ln_2.weight"], low_precision)
        up = F.gelu(F.linear(h, w[block + "mlp.mlp_up.weight"]))
        x = x + F.linear(up, w[block + "mlp.mlp_down.weight"])
    x = layer_norm(x, w["transformer.ln_f.weight"], low_precision)
    return F.linear(x, w["transformer.wte.weight"])


def _extend(ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor):
    return torch.cat([ids, tokens[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


def greedy(config: dict, w: dict, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int):
    """Greedy decoding by whole-sequence forwards (no cache). Returns (B, L + new_tokens)."""
    for _ in range(new_tokens):
        ids, mask = _extend(ids, mask, logits(config, w, ids, mask)[:, -1].argmax(-1))
    return ids


def beam_search(config: dict, w: dict, ids, mask, num_beams: int, new_tokens: int):
    """Beam search without an end token by whole-sequence forwards: each row keeps the
    `num_beams` continuations of highest summed float32 log-probability and returns the best.
    ids, mask: (B, L). Returns (B, L + new_tokens)."""
    best = []
    for row in range(ids.shape[0]):
        beams, beam_mask = ids[row : row + 1], mask[row : row + 1]
        scores = torch.zeros(1, device=ids.device)
        for _ in range(new_tokens):
            last = logits(config, w, beams, beam_mask)[:, -1].float().log_softmax(-1)
            total = (scores[:, None] + last).flatten()  # (beams * vocab,)
            scores, index = total.topk(num_beams)
            source, token = index // last.shape[1], index % last.shape[1]
            beams, beam_mask = _extend(beams[source], beam_mask[source], token)
        best.append(beams[scores.argmax()])
    return torch.stack(best)

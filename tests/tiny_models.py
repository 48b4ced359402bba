"""Tiny, offline models for tests: one small config per LM family, and Flamingos built on them."""

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPTJConfig,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MptConfig,
    OPTConfig,
    Qwen2Config,
)

from open_flamingo import create_model_and_transforms

VISION_ENCODER = "ViT-Tiny-16"  # open_flamingo/model_configs/ViT-Tiny-16.json, 64 px images
IMAGE_SIZE = 64
# 256 byte tokens + EOS; Flamingo then adds <|endofchunk|>, <image>, <PAD> -> 260 ids.
VOCAB_SIZE = 260


_COMMON = dict(vocab_size=VOCAB_SIZE, bos_token_id=256, eos_token_id=256)


def lm_config(family: str, num_layers: int = 4):
    """A small random-init config for each supported LM family."""
    if family == "mpt":
        return MptConfig(
            d_model=64,
            n_heads=4,
            n_layers=num_layers,
            expansion_ratio=2,
            max_seq_len=256,
            no_bias=True,
            **_COMMON,
        )
    if family == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **_COMMON,
        )
    if family == "llama3-gqa":  # Llama-3 style: grouped-query attention, large rope theta, untied
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=num_layers,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            tie_word_embeddings=False,
            **_COMMON,
        )
    if family == "opt":
        return OPTConfig(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            max_position_embeddings=256,
            pad_token_id=259,
            **_COMMON,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            rotary_pct=0.25,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **_COMMON,
        )
    if family == "gptj":
        return GPTJConfig(
            n_embd=64, n_head=4, n_layer=num_layers, rotary_dim=8, n_positions=256, **_COMMON
        )
    if family == "gpt_neo":
        return GPTNeoConfig(
            hidden_size=64,
            num_heads=4,
            num_layers=num_layers,
            attention_types=[[["global", "local"], num_layers // 2]],
            window_size=32,
            max_position_embeddings=256,
            **_COMMON,
        )
    if family == "mistral":
        return MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            sliding_window=32,
            **_COMMON,
        )
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **_COMMON,
        )
    raise ValueError(family)


FAMILIES = ["mpt", "llama", "llama3-gqa", "opt", "gpt_neox", "gptj", "gpt_neo", "mistral", "qwen2"]


def save_tiny_lm(family: str, path: Path, seed: int = 0, num_layers: int = 4) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(lm_config(family, num_layers), dtype=torch.float32)
    model.save_pretrained(path)
    return path


def build_flamingo(lm_dir: Path, tokenizer_dir: Path, seed: int = 0, **kwargs):
    """create_model_and_transforms on the tiny vision encoder and a saved tiny LM."""
    torch.manual_seed(seed)
    return create_model_and_transforms(
        VISION_ENCODER, None, str(lm_dir), str(tokenizer_dir), use_local_files=True, **kwargs
    )


def randomize_gates(model, seed: int = 1) -> None:
    """Open the tanh gates (init 0) so that images change the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.copy_(torch.rand(1, generator=generator) + 0.5)
                block.ff_gate.copy_(torch.rand(1, generator=generator) + 0.5)

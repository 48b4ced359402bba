"""Run upstream open-flamingo 2.0.1 (transformers 4.46) on a tiny model and dump its outputs.

Runs with PYTHONPATH=.cache/upstream-site (open-flamingo 2.0.1, transformers 4.46.3, open_clip
2.32; see `make upstream`); tests/test_upstream_equivalence.py loads the dump into our
implementation and compares.

Usage: python dump_upstream.py WORKDIR FAMILY [FAMILY ...]
Writes WORKDIR/FAMILY/{lm,tokenizer}/ (the LM and tokenizer as upstream saw them) and
WORKDIR/FAMILY/dump.pt.
"""

import sys
from pathlib import Path

import open_clip
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from open_flamingo import create_model_and_transforms  # upstream's, from PYTHONPATH

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from byte_tokenizer import save_byte_tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL_CONFIGS = HERE.parents[1] / "open_flamingo" / "model_configs"
COMMON = dict(vocab_size=260, bos_token_id=256, eos_token_id=256)
# Configs written with transformers 4.46 argument names.
CONFIGS = {
    "mpt": dict(
        model_type="mpt",
        d_model=64,
        n_heads=4,
        n_layers=4,
        expansion_ratio=2,
        max_seq_len=256,
        no_bias=True,
    ),
    "llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    ),
    "llama3-gqa": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "opt": dict(
        model_type="opt",
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=256,
        pad_token_id=259,
    ),
    "gpt_neox": dict(
        model_type="gpt_neox",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        rotary_pct=0.25,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
    "gptj": dict(model_type="gptj", n_embd=64, n_head=4, n_layer=4, rotary_dim=8, n_positions=256),
    "gpt_neo": dict(
        model_type="gpt_neo",
        hidden_size=64,
        num_heads=4,
        num_layers=4,
        attention_types=[[["global", "local"], 2]],
        window_size=32,
        max_position_embeddings=256,
    ),
    "mistral": dict(
        model_type="mistral",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=32,
    ),
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
}
# Families upstream's name lookup does not know.
LAYERS_ATTR = {"gpt_neo": "transformer.h", "mistral": "model.layers", "qwen2": "model.layers"}
XATTN_EVERY = {
    "mpt": 1,
    "llama": 2,
    "llama3-gqa": 1,
    "opt": 1,
    "gpt_neox": 2,
    "gptj": 1,
    "gpt_neo": 1,
    "mistral": 1,
    "qwen2": 4,
}


def dump(family: str, workdir: Path) -> None:
    config = dict(CONFIGS[family])
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config, **COMMON))
    lm.save_pretrained(workdir / "lm")
    save_byte_tokenizer(workdir / "tokenizer")

    torch.manual_seed(1)
    model, _, tokenizer = create_model_and_transforms(
        "ViT-Tiny-16",
        None,
        str(workdir / "lm"),
        str(workdir / "tokenizer"),
        cross_attn_every_n_layers=XATTN_EVERY[family],
        decoder_layers_attr_name=LAYERS_ATTR.get(family),
    )
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # open the gates and move the new token rows away from their init
        for name, param in model.named_parameters():
            if name.endswith("_gate") and "gated_cross_attn_layers" in name:
                param.copy_(torch.rand(1, generator=generator) + 0.5)
    model.eval()

    texts = [
        "a cat<image>sits on a mat<|endofchunk|><image>and a dog",
        "<image>one<|endofchunk|>",
        "no image yet, then<image>a red square and<image>a blue",
    ]
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    vision_x = torch.randn(3, 2, 1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        logits = model(vision_x, batch.input_ids, attention_mask=batch.attention_mask).logits
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(
            vision_x, batch.input_ids, attention_mask=batch.attention_mask, labels=labels
        ).loss
    prompts = ["<image>a photo of", "<image>x<|endofchunk|><image>a photo of"]
    generations = {}
    for i, prompt in enumerate(prompts):
        ids = tokenizer([prompt], return_tensors="pt")
        vx = vision_x[i : i + 1, : prompt.count("<image>")]
        for name, kwargs in {"greedy": {}, "beam3": {"num_beams": 3}}.items():
            generations[(i, name)] = model.generate(
                vx,
                ids.input_ids,
                attention_mask=ids.attention_mask,
                max_new_tokens=12,
                min_new_tokens=12,
                **kwargs,
            )
    torch.save(
        {
            "family": family,
            "cross_attn_every_n_layers": XATTN_EVERY[family],
            "decoder_layers_attr_name": LAYERS_ATTR.get(family),
            "state_dict": model.state_dict(),
            "special_ids": tokenizer.convert_tokens_to_ids(["<|endofchunk|>", "<image>", "<PAD>"]),
            "texts": texts,
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "vision_x": vision_x,
            "logits": logits,
            "loss": loss,
            "prompts": prompts,
            "generations": generations,
        },
        workdir / "dump.pt",
    )


def main(workdir: Path, families: list[str]) -> None:
    open_clip.add_model_config(MODEL_CONFIGS)
    for family in families:
        (workdir / family).mkdir(parents=True, exist_ok=True)
        dump(family, workdir / family)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

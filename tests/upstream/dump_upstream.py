"""Run upstream open-flamingo 2.0.1 (transformers 4.46) on a tiny model and dump its outputs.

Runs with PYTHONPATH=.cache/upstream-site (open-flamingo 2.0.1, transformers 4.46.3, open_clip
2.32; see `make upstream`); tests/test_upstream_equivalence.py loads the dump into our
implementation and compares.

Usage: python dump_upstream.py WORKDIR FAMILY [FAMILY ...]
Writes WORKDIR/FAMILY/{lm,tokenizer}/ (the LM and tokenizer as upstream saw them) and
WORKDIR/FAMILY/dump.pt.
"""

import importlib.util
import sys
from pathlib import Path

import open_clip
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from open_flamingo import create_model_and_transforms  # upstream's, from PYTHONPATH

HERE = Path(__file__).resolve().parent
# Our byte tokenizer, loaded from its file: `open_flamingo` is upstream's package here.
_spec = importlib.util.spec_from_file_location(
    "byte_tokenizer", HERE.parents[1] / "open_flamingo" / "tools" / "byte_tokenizer.py"
)
byte_tokenizer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(byte_tokenizer)
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


NEW_TOKENS = ["<|endofchunk|>", "<image>", "<PAD>"]


def open_gates(model, generator: torch.Generator) -> None:
    """Set every tanh gate (init 0, which hides cross-attention entirely) to a value in [0.5, 1.5).

    Upstream registers each block under two names; `named_parameters()` lists it once, under the
    decoder layer's alias (`<layers>.N.gated_cross_attn_layer.attn_gate`), not under
    `gated_cross_attn_layers`, so the gates are found by their own names.
    """
    gates = [p for name, p in model.named_parameters() if name.endswith(("attn_gate", "ff_gate"))]
    with torch.no_grad():
        for gate in gates:
            gate.copy_(torch.rand(1, generator=generator) + 0.5)
    blocks = [block for block in model.lang_encoder.gated_cross_attn_layers if block is not None]
    assert blocks and len(gates) == 2 * len(blocks), (len(gates), len(blocks))
    closed = [
        key for key, value in model.state_dict().items() if key.endswith("_gate") and value == 0
    ]
    assert not closed, f"gates still closed: {closed}"


def move_new_token_rows(model, tokenizer, generator: torch.Generator) -> None:
    """Give the new tokens' embedding rows values that no initialisation would give.

    The input embedding is trained upstream. An untied output embedding whose name holds
    "embed" (GPT-NeoX's `embed_out`) is frozen but saved in upstream's checkpoints (their filter
    keeps every key containing "embed"), so its rows are moved too.
    """
    ids = tokenizer.convert_tokens_to_ids(NEW_TOKENS)
    lm = model.lang_encoder
    tables = [lm.get_input_embeddings().weight]
    output = lm.get_output_embeddings()
    output_name = next(name for name, module in lm.named_modules() if module is output)
    if output.weight is not tables[0] and "embed" in output_name:
        tables.append(output.weight)
    with torch.no_grad():
        for table in tables:
            before = table[ids].clone()
            table[ids] = torch.randn(before.shape, generator=generator) * 0.5
            assert (table[ids] - before).abs().min() > 0


def dump(family: str, workdir: Path) -> None:
    config = dict(CONFIGS[family])
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config, **COMMON))
    lm.save_pretrained(workdir / "lm")
    byte_tokenizer.save_byte_tokenizer(workdir / "tokenizer")

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
    open_gates(model, generator)
    move_new_token_rows(model, tokenizer, generator)
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
            "special_ids": tokenizer.convert_tokens_to_ids(NEW_TOKENS),
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

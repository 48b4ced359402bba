"""Released OpenFlamingo checkpoints on the LMs their users hold: a 3B `checkpoint.pt` in the
released key layout on the converted MosaicGPT, and a 4B one with GPT-NeoX's untied `embed_out`
on a RedPajama-INCITE folder in its published config form. The checkpoints are written here from
the documented layout (../shared/notes/openflamingo-facts.md), key by key, not from our modules."""

import json

import mosaic_gpt_oracle as oracle
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from open_flamingo import create_model_and_transforms, load_checkpoint
from tiny_models import IMAGE_SIZE, VISION_ENCODER

VIS_DIM = 64  # ViT-Tiny-16's width
INNER = 8 * 64  # heads x dim_head of the perceiver and the cross-attention
PERCEIVER_DEPTH, LATENTS = 6, 64


def perceiver_keys(generator) -> dict[str, torch.Tensor]:
    """`perceiver.*` of a released checkpoint: PerceiverResampler(dim=VIS_DIM), depth 6."""
    d, rand = VIS_DIM, lambda *shape: torch.randn(*shape, generator=generator) * 0.1
    keys = {"perceiver.latents": rand(LATENTS, d)}
    for i in range(PERCEIVER_DEPTH):
        layer = f"perceiver.layers.{i}"
        for norm in ("norm_media", "norm_latents"):
            keys[f"{layer}.0.{norm}.weight"] = 1 + rand(d)
            keys[f"{layer}.0.{norm}.bias"] = rand(d)
        keys[f"{layer}.0.to_q.weight"] = rand(INNER, d)
        keys[f"{layer}.0.to_kv.weight"] = rand(2 * INNER, d)
        keys[f"{layer}.0.to_out.weight"] = rand(d, INNER)
        keys[f"{layer}.1.0.weight"], keys[f"{layer}.1.0.bias"] = 1 + rand(d), rand(d)
        keys[f"{layer}.1.1.weight"] = rand(4 * d, d)
        keys[f"{layer}.1.3.weight"] = rand(d, 4 * d)
    keys["perceiver.norm.weight"], keys["perceiver.norm.bias"] = 1 + rand(d), rand(d)
    return keys


def cross_attention_block(generator, dim: int) -> dict[str, torch.Tensor]:
    """One GatedCrossAttentionBlock(dim, dim_visual=VIS_DIM)'s keys, gates open."""
    rand = lambda *shape: torch.randn(*shape, generator=generator) * 0.1  # noqa: E731
    return {
        "attn_gate": torch.tensor([0.7]),
        "ff_gate": torch.tensor([-0.4]),
        "attn.norm.weight": 1 + rand(dim),
        "attn.norm.bias": rand(dim),
        "attn.to_q.weight": rand(INNER, dim),
        "attn.to_kv.weight": rand(2 * INNER, VIS_DIM),
        "attn.to_out.weight": rand(dim, INNER),
        "ff.0.weight": 1 + rand(dim),
        "ff.0.bias": rand(dim),
        "ff.1.weight": rand(4 * dim, dim),
        "ff.3.weight": rand(dim, 4 * dim),
    }


def released_checkpoint(
    generator, layers_path: str, block_layers, dim: int, embeddings: dict, both_names: bool
):
    """A released `checkpoint.pt`: perceiver, each block under the layer alias
    `<layers>.N.gated_cross_attn_layer.*` (all that 2.0's training code saved) and, with
    `both_names`, also under `gated_cross_attn_layers.N.*` (a full upstream state dict), and
    the embedding keys."""
    keys = perceiver_keys(generator)
    for n in block_layers:
        for name, tensor in cross_attention_block(generator, dim).items():
            keys[f"lang_encoder.{layers_path}.{n}.gated_cross_attn_layer.{name}"] = tensor
            if both_names:
                keys[f"lang_encoder.gated_cross_attn_layers.{n}.{name}"] = tensor
    return keys | embeddings


def released_tensor(checkpoint: dict, name: str, layers_path: str) -> torch.Tensor:
    """The checkpoint's tensor for our parameter `name`, under whichever name it was saved."""
    if name in checkpoint:
        return checkpoint[name]
    n, rest = name.removeprefix("lang_encoder.gated_cross_attn_layers.").split(".", 1)
    alias = f"lang_encoder.{layers_path}.{n}.gated_cross_attn_layer.{rest}"
    return checkpoint[alias]


def assemble_by_hand(model, checkpoint: dict, layers_path: str) -> None:
    """Put the checkpoint's tensors into `model` through its modules, not its state-dict names."""
    perceiver = model.perceiver
    with torch.no_grad():
        perceiver.latents.copy_(checkpoint["perceiver.latents"])
        for i, (attn, ff) in enumerate(perceiver.layers):
            prefix = f"perceiver.layers.{i}"
            for name, norm in (
                ("0.norm_media", attn.norm_media),
                ("0.norm_latents", attn.norm_latents),
                ("1.0", ff[0]),
            ):
                norm.weight.copy_(checkpoint[f"{prefix}.{name}.weight"])
                norm.bias.copy_(checkpoint[f"{prefix}.{name}.bias"])
            attn.to_q.weight.copy_(checkpoint[f"{prefix}.0.to_q.weight"])
            attn.to_kv.weight.copy_(checkpoint[f"{prefix}.0.to_kv.weight"])
            attn.to_out.weight.copy_(checkpoint[f"{prefix}.0.to_out.weight"])
            ff[1].weight.copy_(checkpoint[f"{prefix}.1.1.weight"])
            ff[3].weight.copy_(checkpoint[f"{prefix}.1.3.weight"])
        perceiver.norm.weight.copy_(checkpoint["perceiver.norm.weight"])
        perceiver.norm.bias.copy_(checkpoint["perceiver.norm.bias"])
        for n, block in enumerate(model.lang_encoder.gated_cross_attn_layers):
            if block is None:
                continue
            prefix = f"lang_encoder.{layers_path}.{n}.gated_cross_attn_layer"
            block.attn_gate.copy_(checkpoint[f"{prefix}.attn_gate"])
            block.ff_gate.copy_(checkpoint[f"{prefix}.ff_gate"])
            block.attn.norm.weight.copy_(checkpoint[f"{prefix}.attn.norm.weight"])
            block.attn.norm.bias.copy_(checkpoint[f"{prefix}.attn.norm.bias"])
            for name in ("to_q", "to_kv", "to_out"):
                getattr(block.attn, name).weight.copy_(checkpoint[f"{prefix}.attn.{name}.weight"])
            block.ff[0].weight.copy_(checkpoint[f"{prefix}.ff.0.weight"])
            block.ff[0].bias.copy_(checkpoint[f"{prefix}.ff.0.bias"])
            block.ff[1].weight.copy_(checkpoint[f"{prefix}.ff.1.weight"])
            block.ff[3].weight.copy_(checkpoint[f"{prefix}.ff.3.weight"])


def flamingo(lm_folder, tokenizer_dir, every: int):
    torch.manual_seed(0)  # the same random init of the parts the checkpoint does not hold
    model, _, tokenizer = create_model_and_transforms(
        VISION_ENCODER, None, str(lm_folder), str(tokenizer_dir), cross_attn_every_n_layers=every
    )
    return model.eval(), tokenizer


def outputs(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a two-image prompt batch, and its beam-3 generation."""
    tokenizer.padding_side = "left"
    batch = tokenizer(
        ["<image>a red square<|endofchunk|><image>a", "<image>two"],
        return_tensors="pt",
        padding=True,
    )
    vision = torch.randn(
        2, 2, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        logits = model(vision, batch.input_ids, attention_mask=batch.attention_mask).logits
    generated = model.generate(
        vision, batch.input_ids, batch.attention_mask, max_new_tokens=5, num_beams=3
    )
    return logits, generated


def check_released_checkpoint(
    lm_folder, tokenizer_dir, checkpoint: dict, every, layers, tmp_path, input_key, output_key=None
):
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    loaded, tokenizer = flamingo(lm_folder, tokenizer_dir, every)
    load_checkpoint(loaded, path)
    # no trainable weight kept its initial value: each equals the released tensor
    state = loaded.state_dict()
    for name, param in loaded.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, released_tensor(checkpoint, name, layers)), name
    assert {k for k in checkpoint if k.startswith("lang_encoder.gated_cross_attn_layers.")} <= set(
        state
    )
    by_hand, _ = flamingo(lm_folder, tokenizer_dir, every)
    assemble_by_hand(by_hand, checkpoint, layers)
    with torch.no_grad():
        by_hand.lang_encoder.get_input_embeddings().weight.copy_(checkpoint[input_key])
        if output_key is not None:
            by_hand.lang_encoder.get_output_embeddings().weight.copy_(checkpoint[output_key])
    ours, theirs = outputs(loaded, tokenizer), outputs(by_hand, tokenizer)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    return loaded


def test_a_released_3b_checkpoint_loads_onto_the_converted_mosaic_gpt(tmp_path, byte_tokenizer_dir):
    config = oracle.tiny_config(n_layers=4)
    folder = oracle.save_folder(tmp_path / "mpt-1b", config, oracle.random_weights(config, 0))
    generator = torch.Generator().manual_seed(11)
    wte = torch.randn(config["vocab_size"], config["d_model"], generator=generator)
    checkpoint = released_checkpoint(
        generator,
        "transformer.blocks",
        range(4),
        config["d_model"],
        {"lang_encoder.transformer.wte.weight": wte},
        both_names=False,
    )
    model = check_released_checkpoint(
        folder,
        byte_tokenizer_dir,
        checkpoint,
        1,
        "transformer.blocks",
        tmp_path,
        "lang_encoder.transformer.wte.weight",
    )
    # the converted LM keeps the tied head: the released embedding is its output layer too
    assert (
        model.lang_encoder.get_output_embeddings().weight
        is model.lang_encoder.transformer.wte.weight
    )
    assert not (folder / "REMOTE_CODE_RAN").exists()


REDPAJAMA_3B_CONFIG = {  # togethercomputer/RedPajama-INCITE-Base-3B-v1's config.json, shrunk
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 256,
    "eos_token_id": 256,
    "hidden_act": "gelu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 256,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 128,
    "model_type": "gpt_neox",
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.28.1",
    "use_cache": True,
    "use_parallel_residual": False,
    "vocab_size": 257,
}


def test_a_released_4b_checkpoint_loads_its_untied_embed_out_rows(tmp_path, byte_tokenizer_dir):
    """The 4B's LM as published (GPT-NeoX, untied `embed_out`, float16 on disk, the vocabulary
    grown by Flamingo's three tokens): upstream's checkpoint filter kept every key holding
    "embed", so the released file carries `embed_out` with the new rows, and they load."""
    folder = tmp_path / "redpajama"
    folder.mkdir()
    torch.manual_seed(5)
    lm = GPTNeoXForCausalLM(GPTNeoXConfig(**REDPAJAMA_3B_CONFIG)).half()
    lm.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False and saved["model_type"] == "gpt_neox"
    generator = torch.Generator().manual_seed(12)
    vocab = 260  # 257 byte tokens + <|endofchunk|>, <image>, <PAD>
    embeddings = {
        "lang_encoder.gpt_neox.embed_in.weight": torch.randn(vocab, 64, generator=generator),
        "lang_encoder.embed_out.weight": torch.randn(vocab, 64, generator=generator),
    }
    checkpoint = released_checkpoint(
        generator, "gpt_neox.layers", (1, 3), 64, embeddings, both_names=True
    )
    model = check_released_checkpoint(
        folder,
        byte_tokenizer_dir,
        checkpoint,
        2,
        "gpt_neox.layers",
        tmp_path,
        "lang_encoder.gpt_neox.embed_in.weight",
        "lang_encoder.embed_out.weight",
    )
    head = model.lang_encoder.get_output_embeddings().weight
    assert torch.equal(head, embeddings["lang_encoder.embed_out.weight"])
    assert head is not model.lang_encoder.get_input_embeddings().weight


def test_the_4b_checkpoint_on_the_wrong_interval_is_refused(tmp_path, byte_tokenizer_dir):
    folder = tmp_path / "redpajama"
    GPTNeoXForCausalLM(GPTNeoXConfig(**REDPAJAMA_3B_CONFIG)).save_pretrained(folder)
    generator = torch.Generator().manual_seed(12)
    checkpoint = released_checkpoint(generator, "gpt_neox.layers", (1, 3), 64, {}, False)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    model, _ = flamingo(folder, byte_tokenizer_dir, 1)
    with pytest.raises(ValueError, match="cross_attn_every_n_layers=2"):
        load_checkpoint(model, tmp_path / "checkpoint.pt")

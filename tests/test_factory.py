"""create_model_and_transforms with real tokenizers, a real pretrained LM, local CLIP weights,
remote code, and the image processor."""

import json

import open_clip
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from open_flamingo import create_model_and_transforms
from open_flamingo.src.factory import load_flamingo_tokenizer
from tiny_models import IMAGE_SIZE, VISION_ENCODER, save_tiny_lm

SMOLLM2 = "smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize(
    "name, expected",
    [
        # GPT-NeoX-20B: the tokenizer of MPT-1B/7B and so of OpenFlamingo-3B/9B
        ("gpt-neox-20b", {"<|endofchunk|>": 50277, "<image>": 50278, "<PAD>": 50279}),
        ("gpt2", {"<|endofchunk|>": 50257, "<image>": 50258, "<PAD>": 50259}),
    ],
)
def test_special_token_ids_match_released_checkpoints(name, expected, assets):
    tokenizer = load_flamingo_tokenizer(str(assets / "tokenizers" / name))
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(tokenizer) == max(expected.values()) + 1
    assert tokenizer.pad_token == "<PAD>"
    ids = tokenizer("<image>Output:a cat<|endofchunk|>").input_ids
    assert ids[0] == expected["<image>"] and ids[-1] == expected["<|endofchunk|>"]
    assert tokenizer.decode(ids[1:-1]) == "Output:a cat"


def test_flamingo_tokens_follow_the_vocabulary_of_a_real_lm(assets):
    tokenizer = load_flamingo_tokenizer(str(assets / SMOLLM2))
    assert tokenizer.convert_tokens_to_ids(["<|endofchunk|>", "<image>"]) == [49152, 49153]


def test_existing_pad_token_is_kept(byte_tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(byte_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path)
    flamingo_tokenizer = load_flamingo_tokenizer(str(tmp_path))
    assert flamingo_tokenizer.pad_token == "<|endoftext|>"
    assert len(flamingo_tokenizer) == len(tokenizer) + 2


def test_real_pretrained_lm_keeps_its_knowledge_with_closed_gates(assets):
    """SmolLM2-135M (LLaMA architecture) loaded from a .gguf file through the factory."""
    path = str(assets / SMOLLM2)
    model, _, tokenizer = create_model_and_transforms(
        VISION_ENCODER, None, path, path, use_local_files=True
    )
    assert model.decoder_layers_attr_name == "model.layers"
    assert sum(block is not None for block in model.lang_encoder.gated_cross_attn_layers) == 30
    prompt = tokenizer(["The capital of France is"], return_tensors="pt")
    vision = torch.zeros(1, 1, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = model.generate(
        vision, prompt.input_ids, attention_mask=prompt.attention_mask, max_new_tokens=3
    )
    assert tokenizer.decode(out[0, prompt.input_ids.shape[1] :]).startswith(" Paris.")


def test_vision_encoder_from_local_weights_file(tmp_path, tiny_lm_dirs, byte_tokenizer_dir):
    torch.manual_seed(123)
    clip = open_clip.create_model(VISION_ENCODER, pretrained=None)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    torch.manual_seed(0)
    model, image_processor, _ = create_model_and_transforms(
        VISION_ENCODER,
        str(tmp_path / "clip.pt"),
        str(tiny_lm_dirs["mpt"]),
        str(byte_tokenizer_dir),
    )
    for key, value in clip.visual.state_dict().items():
        assert torch.equal(model.vision_encoder.state_dict()[key], value), key
    image = Image.new("RGB", (100, 80), color=(200, 10, 10))
    pixels = image_processor(image)
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def write_remote_code_lm(path, tiny_lm_dir):
    """A checkpoint whose config points at code in its own folder (auto_map)."""
    path.mkdir()
    (path / "modeling_custom.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n\n"
        "class CustomLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((tiny_lm_dir / "config.json").read_text())
    config["model_type"] = "custom_llama"
    config["auto_map"] = {
        "AutoConfig": "modeling_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomLM",
    }
    (path / "config.json").write_text(json.dumps(config))
    for file in tiny_lm_dir.glob("*.safetensors"):
        (path / file.name).write_bytes(file.read_bytes())


def test_remote_code_is_opt_in(tmp_path, tiny_lm_dirs, byte_tokenizer_dir):
    lm_dir = tmp_path / "remote_lm"
    write_remote_code_lm(lm_dir, tiny_lm_dirs["llama"])
    args = (VISION_ENCODER, None, str(lm_dir), str(byte_tokenizer_dir))
    with pytest.raises(ValueError, match="trust_remote_code"):
        create_model_and_transforms(*args)
    with pytest.raises(ValueError, match="decoder_layers_attr_name"):
        create_model_and_transforms(*args, trust_remote_code=True)
    model, _, _ = create_model_and_transforms(
        *args, trust_remote_code=True, decoder_layers_attr_name="model.layers"
    )
    assert type(model.lang_encoder).__name__ == "CustomLM"


def test_lm_is_loaded_in_float32_even_from_a_bfloat16_checkpoint(tmp_path, byte_tokenizer_dir):
    """transformers 5 loads checkpoints in their stored dtype by default; upstream numerics are
    float32, and training / evaluation cast to their own precision."""
    lm_dir = save_tiny_lm("qwen2", tmp_path / "qwen2", seed=4)
    bf16_dir = tmp_path / "qwen2-bf16"
    AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    model, _, _ = create_model_and_transforms(
        VISION_ENCODER, None, str(bf16_dir), str(byte_tokenizer_dir), use_local_files=True
    )
    assert model.lang_encoder.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())

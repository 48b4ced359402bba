"""The README's usage blocks run as written, with tiny local models in place of hub names."""

import re

import torch
from PIL import Image

from conftest import REPO
from open_flamingo import trainable_state_dict
from tiny_models import build_flamingo

HUB_NAMES = {
    '"ViT-L-14"': '"ViT-Tiny-16"',
    'clip_vision_encoder_pretrained="openai"': "clip_vision_encoder_pretrained=None",
    'lang_encoder_path="togethercomputer/RedPajama-INCITE-Base-3B-v1"': "lang_encoder_path={lm!r}",
    'tokenizer_path="togethercomputer/RedPajama-INCITE-Base-3B-v1"': "tokenizer_path={tokenizer!r}",
    'hf_hub_download("openflamingo/OpenFlamingo-4B-vitl-rpj3b", "checkpoint.pt")': "{checkpoint!r}",
}


def usage_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    usage = readme.split("## Usage", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", usage, flags=re.S)


def test_readme_usage_runs_as_written(
    tmp_path, monkeypatch, tiny_lm_dirs, byte_tokenizer_dir, capsys
):
    blocks = usage_blocks()
    assert len(blocks) == 5  # initialise, load released weights, generate, score, save
    # a "released" checkpoint: trainable weights of another model of the same architecture
    released, _, _ = build_flamingo(
        tiny_lm_dirs["gpt_neox"], byte_tokenizer_dir, seed=7, cross_attn_every_n_layers=2
    )
    checkpoint = trainable_state_dict(released)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    paths = {
        "lm": str(tiny_lm_dirs["gpt_neox"]),
        "tokenizer": str(byte_tokenizer_dir),
        "checkpoint": str(tmp_path / "checkpoint.pt"),
    }
    (tmp_path / "images").mkdir()
    for name, color in [("two_cats", "orange"), ("bathroom_sink", "white"), ("query", "blue")]:
        Image.new("RGB", (120, 90), color).save(tmp_path / "images" / f"{name}.jpg")
    monkeypatch.chdir(tmp_path)

    namespace = {}
    for index, block in enumerate(blocks):
        for hub_name, local in HUB_NAMES.items():
            block = block.replace(hub_name, local.format(**paths))
        assert "togethercomputer" not in block and "openai" not in block
        if index == 4:  # the last block rebinds `model` to the reloaded one
            model = namespace["model"]
        exec(compile(block, "README.md", "exec"), namespace)

    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint.items())
    generated, prompt = namespace["generated"], namespace["prompt"]
    assert torch.equal(generated[0, : prompt["input_ids"].shape[1]], prompt["input_ids"][0])
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert "Generated text:" in capsys.readouterr().out

    # the cached-media scores equal each continuation scored in one uncached forward
    prompt_ids, vision_x = prompt["input_ids"], namespace["vision_x"]
    tokenizer = namespace["tokenizer"]
    for continuation, score in namespace["scores"].items():
        ids = tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(vision_x, torch.cat([prompt_ids, ids], dim=1)).logits
        n = ids.shape[1]
        expected = logits[:, -n - 1 : -1].log_softmax(-1).gather(-1, ids[..., None]).sum()
        assert abs(score - expected.item()) < 1e-4, continuation
    # the reloaded model is the saved one
    assert (tmp_path / "my-flamingo" / "open_flamingo_config.json").is_file()
    reloaded = namespace["model"]
    assert reloaded is not model
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key

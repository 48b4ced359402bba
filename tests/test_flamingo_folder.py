"""Flamingo.save_pretrained / from_pretrained / push_to_hub and load_model_and_transforms: one
folder reloads the whole model, with outputs identical to the model that was saved."""

import json

import mosaic_gpt_oracle as oracle
import pytest
import torch
from PIL import Image

from open_flamingo import Flamingo, create_model_and_transforms, load_model_and_transforms
from open_flamingo.src import flamingo_folder
from tiny_models import VISION_ENCODER, build_flamingo, randomize_gates

PROMPT = "<image>a red square<|endofchunk|><image>a"


def inputs(image_processor, tokenizer, dtype=torch.float32):
    images = [Image.new("RGB", (80, 64), color) for color in ("red", "blue")]
    vision_x = torch.stack([image_processor(image) for image in images])[None, :, None]
    text = tokenizer([PROMPT, "<image>x<image>a blue"], return_tensors="pt", padding=True)
    vision_x = torch.cat([vision_x, vision_x.flip(1)]).to(dtype)
    return vision_x, text["input_ids"], text["attention_mask"]


def outputs(model, vision_x, ids, mask):
    """Logits of a forward and greedy tokens of a generate."""
    with torch.no_grad():
        logits = model(vision_x, ids, attention_mask=mask).logits
        tokens = model.generate(vision_x, ids, attention_mask=mask, max_new_tokens=5, num_beams=2)
    return logits, tokens


def perturb(model, seed=3):
    """Open the gates and move every trainable weight off its initial value (and the LM's new
    embedding rows), so that a part left unloaded shows in the outputs."""
    randomize_gates(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(0.02 * noise.to(parameter.dtype))


@pytest.mark.parametrize("family", ["mpt", "llama", "llama3-gqa", "gpt_neox", "opt"])
def test_a_saved_folder_reloads_with_identical_outputs(
    tiny_lm_dirs, byte_tokenizer_dir, tmp_path, family
):
    model, image_processor, tokenizer = build_flamingo(tiny_lm_dirs[family], byte_tokenizer_dir)
    perturb(model)
    model.eval()
    expected = outputs(model, *inputs(image_processor, tokenizer))

    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    config = json.loads((tmp_path / "saved" / flamingo_folder.CONFIG_FILE).read_text())
    assert config["clip_vision_encoder_path"] == VISION_ENCODER
    assert config["lang_encoder_source"] == str(tiny_lm_dirs[family])

    loaded, loaded_processor, loaded_tokenizer = load_model_and_transforms(tmp_path / "saved")
    assert isinstance(loaded, Flamingo)
    assert loaded_tokenizer.convert_ids_to_tokens(
        [50, 258, 257]
    ) == tokenizer.convert_ids_to_tokens([50, 258, 257])
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {name for name, p in loaded.named_parameters() if p.requires_grad} == trainable
    loaded.eval()
    got = outputs(loaded, *inputs(loaded_processor, loaded_tokenizer))
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_the_lm_subfolder_is_a_plain_hugging_face_folder(
    tiny_lm_dirs, byte_tokenizer_dir, tmp_path
):
    """No wrapper or cross-attention key leaks into the LM's folder: transformers reads every
    key, and with the gates closed the Flamingo computes that plain LM's logits exactly."""
    from transformers import AutoModelForCausalLM

    model, image_processor, tokenizer = build_flamingo(tiny_lm_dirs["llama"], byte_tokenizer_dir)
    perturb(model)
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    lm, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "saved" / flamingo_folder.LM_DIR, output_loading_info=True
    )
    assert not any(info.values()), info
    vision_x, ids, mask = inputs(image_processor, tokenizer)
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.zero_()
                block.ff_gate.zero_()
        flamingo = model(vision_x, ids, attention_mask=mask).logits
        plain = lm(ids, attention_mask=mask).logits
    assert torch.equal(flamingo[mask.bool()], plain[mask.bool()])


def test_mosaic_gpt_lm_round_trips_as_native_mpt_with_qk_layernorm(byte_tokenizer_dir, tmp_path):
    config = oracle.tiny_config(attn_qk_ln=True)
    folder = oracle.save_folder(tmp_path / "mosaic", config, oracle.random_weights(config, 0))
    model, image_processor, tokenizer = create_model_and_transforms(
        VISION_ENCODER, None, str(folder), str(byte_tokenizer_dir), use_local_files=True
    )
    perturb(model)
    model.eval()
    expected = outputs(model, *inputs(image_processor, tokenizer))
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    loaded = Flamingo.from_pretrained(tmp_path / "saved").eval()
    assert loaded.lang_encoder.config.attn_config.qk_ln
    got = outputs(loaded, *inputs(image_processor, tokenizer))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_bfloat16_weights_stay_bfloat16_and_dtype_converts(
    tiny_lm_dirs, byte_tokenizer_dir, tmp_path
):
    model, _, tokenizer = build_flamingo(
        tiny_lm_dirs["mpt"], byte_tokenizer_dir, dtype=torch.bfloat16
    )
    perturb(model)
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    loaded = Flamingo.from_pretrained(tmp_path / "saved")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    widened = Flamingo.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    assert {p.dtype for p in widened.parameters()} == {torch.float32}
    assert torch.equal(widened.perceiver.latents, model.perceiver.latents.float())


def test_frozen_embeddings_are_recorded(tiny_lm_dirs, byte_tokenizer_dir, tmp_path):
    model, _, _ = build_flamingo(tiny_lm_dirs["mpt"], byte_tokenizer_dir, freeze_lm_embeddings=True)
    model.save_pretrained(tmp_path / "saved")
    loaded = Flamingo.from_pretrained(tmp_path / "saved")
    assert not loaded.lang_encoder.get_input_embeddings().weight.requires_grad
    assert loaded.perceiver.latents.requires_grad


def test_folders_that_cannot_load_say_why(tiny_lm_dirs, byte_tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by Flamingo.save_pretrained"):
        Flamingo.from_pretrained(tmp_path)

    model, _, _ = build_flamingo(tiny_lm_dirs["mpt"], byte_tokenizer_dir)
    model.save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(FileNotFoundError, match="saved without one"):
        load_model_and_transforms(tmp_path / "no_tokenizer")

    config_path = tmp_path / "no_tokenizer" / flamingo_folder.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["cross_attn_every_n_layers"] = 2  # half the blocks the weights hold
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit the model its config describes"):
        Flamingo.from_pretrained(tmp_path / "no_tokenizer")

    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 99"):
        Flamingo.from_pretrained(tmp_path / "no_tokenizer")


def test_a_model_assembled_by_hand_needs_the_vision_tower_name(
    tiny_lm_dirs, byte_tokenizer_dir, tmp_path
):
    model, _, _ = build_flamingo(tiny_lm_dirs["mpt"], byte_tokenizer_dir)
    del model.created_from
    with pytest.raises(ValueError, match="pass clip_vision_encoder_path="):
        model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b", clip_vision_encoder_path=VISION_ENCODER)
    assert Flamingo.from_pretrained(tmp_path / "b").vis_dim == model.vis_dim


def test_push_to_hub_uploads_the_saved_folder(tiny_lm_dirs, byte_tokenizer_dir, monkeypatch):
    """The Hub is out of reach here: HfApi's two calls are recorded, and the folder they were
    given is checked to reload."""
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, private=None, exist_ok=False):
        calls["create_repo"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message):
        calls["upload_folder"] = (repo_id, commit_message)
        calls["reloaded"] = Flamingo.from_pretrained(folder_path)
        _, _, calls["tokenizer"] = load_model_and_transforms(folder_path)
        return "https://huggingface.co/me/flamingo/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model, _, tokenizer = build_flamingo(tiny_lm_dirs["mpt"], byte_tokenizer_dir)
    url = model.push_to_hub("me/flamingo", tokenizer=tokenizer, private=True)
    assert url.endswith("/commit/abc")
    assert calls["create_repo"] == ("me/flamingo", True, True)
    assert calls["upload_folder"] == ("me/flamingo", "Upload OpenFlamingo model")
    for key, tensor in model.state_dict().items():
        assert torch.equal(calls["reloaded"].state_dict()[key], tensor), key
    assert len(calls["tokenizer"]) == len(tokenizer)


@pytest.mark.parametrize("family", ["mpt", "llama"])
def test_device_map_auto_places_every_part_beside_the_lm(
    tiny_lm_dirs, byte_tokenizer_dir, tmp_path, family
):
    """On this machine accelerate fits the LM on the CPU (one device, so transformers records
    no map): the placed model gives the plain one's outputs, created and reloaded alike."""
    model, image_processor, tokenizer = build_flamingo(tiny_lm_dirs[family], byte_tokenizer_dir)
    placed, _, _ = build_flamingo(tiny_lm_dirs[family], byte_tokenizer_dir, device_map="auto")
    assert placed.lang_encoder.device == torch.device("cpu")
    perturb(model)
    placed.load_state_dict(model.state_dict())
    model.eval()
    placed.eval()
    expected = outputs(model, *inputs(image_processor, tokenizer))
    got = outputs(placed, *inputs(image_processor, tokenizer))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])

    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    loaded, loaded_processor, loaded_tokenizer = load_model_and_transforms(
        tmp_path / "saved", device_map="auto"
    )
    assert loaded.lang_encoder.device == torch.device("cpu")
    loaded.eval()
    got = outputs(loaded, *inputs(loaded_processor, loaded_tokenizer))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_the_execution_device_of_an_offloaded_module_is_its_hook_s():
    from accelerate import cpu_offload

    from open_flamingo.src.placement import execution_device

    layer = torch.nn.Linear(4, 4)
    cpu_offload(layer, execution_device="cpu")
    assert layer.weight.device.type == "meta"
    assert execution_device(layer) == torch.device("cpu")
    assert execution_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    with pytest.raises(ValueError, match="all its weights are meta"):
        execution_device(torch.nn.Linear(2, 2, device="meta"))

"""Equivalence with upstream open-flamingo 2.0.1, run as the reference.

`make test` installs open-flamingo 2.0.1 with transformers 4.46.3 and open_clip 2.32 into
.cache/upstream-site (importable beside this venv's torch). tests/upstream/dump_upstream.py builds
a tiny model of each LM family with *upstream's* create_model_and_transforms, opens every gate and
moves the new tokens' embedding rows (so that cross-attention and those rows count), and saves
upstream's state_dict(), logits, loss and greedy / beam-search generations. Here we
load those state dicts into our implementation (transformers 5) and compare.

GPT-J is not covered: upstream 2.0.1 cannot run it on transformers 4.46 (its FlamingoLayer
requires `lang_x` positionally; GPT-J passes hidden states by keyword).
"""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, require
from open_flamingo import create_model_and_transforms, load_checkpoint
from open_flamingo.src import helpers
from open_flamingo.src.checkpoint_keys import input_embedding_key, required_checkpoint_keys
from open_flamingo.src.helpers import media_attention_mask
from tiny_models import VISION_ENCODER

UPSTREAM_SITE = REPO / ".cache" / "upstream-site"
FAMILIES = ["mpt", "llama", "llama3-gqa", "opt", "gpt_neox", "gpt_neo", "mistral", "qwen2"]


@pytest.fixture(scope="module")
def upstream_dumps(tmp_path_factory):
    require(
        (UPSTREAM_SITE / "open_flamingo").is_dir(),
        "upstream reference missing: run `make upstream`",
    )
    workdir = tmp_path_factory.mktemp("upstream")
    env = dict(os.environ, PYTHONPATH=str(UPSTREAM_SITE))
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "upstream" / "dump_upstream.py"),
            str(workdir),
            *FAMILIES,
        ],
        env=env,
        check=True,
        capture_output=True,
        cwd=workdir,
    )
    return workdir


def our_model(family_dir, dump):
    model, _, tokenizer = create_model_and_transforms(
        VISION_ENCODER,
        None,
        str(family_dir / "lm"),
        str(family_dir / "tokenizer"),
        cross_attn_every_n_layers=dump["cross_attn_every_n_layers"],
        decoder_layers_attr_name=dump["decoder_layers_attr_name"],
    )
    return model, tokenizer


def check_outputs(model, tokenizer, dump):
    model.eval()
    mask = dump["attention_mask"]
    with torch.no_grad():
        logits = model(dump["vision_x"], dump["input_ids"], attention_mask=mask).logits
        labels = dump["input_ids"].masked_fill(mask == 0, -100)
        loss = model(dump["vision_x"], dump["input_ids"], attention_mask=mask, labels=labels).loss
    real = mask.bool()  # logits at padding positions are meaningless (fully masked rows)
    assert (logits[real] - dump["logits"][real]).abs().max().item() <= 1e-5
    torch.testing.assert_close(loss, dump["loss"], rtol=1e-6, atol=1e-6)
    for (index, name), expected in dump["generations"].items():
        prompt = dump["prompts"][index]
        ids = tokenizer([prompt], return_tensors="pt")
        vision = dump["vision_x"][index : index + 1, : prompt.count("<image>")]
        kwargs = {"num_beams": 3} if name == "beam3" else {}
        out = model.generate(
            vision,
            ids.input_ids,
            attention_mask=ids.attention_mask,
            max_new_tokens=12,
            min_new_tokens=12,
            **kwargs,
        )
        assert torch.equal(out, expected), (name, prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_upstream_state_dict_gives_upstream_outputs(family, upstream_dumps):
    dump = torch.load(upstream_dumps / family / "dump.pt", weights_only=False)
    model, tokenizer = our_model(upstream_dumps / family, dump)
    assert (
        tokenizer.convert_tokens_to_ids(["<|endofchunk|>", "<image>", "<PAD>"])
        == dump["special_ids"]
    )
    gates = [v for k, v in dump["state_dict"].items() if k.endswith("_gate")]
    assert gates and all(gate != 0 for gate in gates)  # cross-attention counts in the outputs
    result = model.load_state_dict(dump["state_dict"], strict=False)
    assert result.unexpected_keys == []  # GPT-NeoX's embed_out included (lm_head here)
    assert not set(required_checkpoint_keys(model)) & set(result.missing_keys)
    check_outputs(model, tokenizer, dump)


def embeddings(state_dict):
    """Upstream's checkpoint filter keeps every key containing "embed", trainable or not
    (GPT-NeoX: embed_in and the frozen, untied embed_out, whose new-token rows the dump moved)."""
    return {k: v for k, v in state_dict.items() if "embed" in k and "vision_encoder" not in k}


def released_form(state_dict):
    """Trainable weights under `gated_cross_attn_layers` (the released checkpoint.pt keys)."""
    return embeddings(state_dict) | {
        k: v
        for k, v in state_dict.items()
        if k.startswith("perceiver.") or k.startswith("lang_encoder.gated_cross_attn_layers.")
    }


def trainer_2_0_form(state_dict):
    """What upstream 2.0's training code saved: the per-layer aliases of the blocks."""
    return embeddings(state_dict) | {
        k: v
        for k, v in state_dict.items()
        if k.startswith("perceiver.") or re.search(r"\.\d+\.gated_cross_attn_layer\.", k)
    }


@pytest.mark.parametrize("family", ["mpt", "llama3-gqa", "gpt_neox"])
@pytest.mark.parametrize("form", [released_form, trainer_2_0_form])
def test_trainable_only_upstream_checkpoints_give_upstream_outputs(family, form, upstream_dumps):
    dump = torch.load(upstream_dumps / family / "dump.pt", weights_only=False)
    state_dict = dump["state_dict"]
    model, tokenizer = our_model(upstream_dumps / family, dump)
    # the frozen parts come from their own pretrained files in real use
    pretrained_clip = {k: v for k, v in state_dict.items() if k.startswith("vision_encoder.")}
    model.load_state_dict(pretrained_clip, strict=False)
    # the trainable input embedding (MPT's `transformer.wte` holds no "embed")
    embedding = input_embedding_key(model)
    checkpoint = form(state_dict) | {embedding: state_dict[embedding]}
    result = model.load_state_dict(checkpoint, strict=False)
    assert result.unexpected_keys == []
    assert not set(required_checkpoint_keys(model)) & set(result.missing_keys)
    check_outputs(model, tokenizer, dump)
    fresh, _ = our_model(upstream_dumps / family, dump)
    fresh.load_state_dict(pretrained_clip, strict=False)
    load_checkpoint(fresh, checkpoint)  # the loader of the CLIs takes it too
    check_outputs(fresh, tokenizer, dump)


def attend_to_every_earlier_image(text_time, num_media, num_latents, only_immediate=True):
    return media_attention_mask(text_time, num_media, num_latents, only_immediate=False)


def gates_without_tanh(self, x, media, text_time, media_kv_cache=None):
    x = self.attn(x, media, text_time, media_kv_cache) * self.attn_gate + x
    return self.ff(x) * self.ff_gate + x


@pytest.mark.parametrize(
    "target, name, broken",
    [
        (helpers, "media_attention_mask", attend_to_every_earlier_image),
        (helpers.GatedCrossAttentionBlock, "forward", gates_without_tanh),
    ],
    ids=["mask_rule", "tanh_gating"],
)
def test_a_broken_cross_attention_fails_the_comparison(
    target, name, broken, upstream_dumps, monkeypatch
):
    """The comparison sees cross-attention: with the gates open, breaking it breaks equality."""
    dump = torch.load(upstream_dumps / "mpt" / "dump.pt", weights_only=False)
    model, tokenizer = our_model(upstream_dumps / "mpt", dump)
    model.load_state_dict(dump["state_dict"], strict=False)
    check_outputs(model, tokenizer, dump)  # intact: equal
    monkeypatch.setattr(target, name, broken)
    with pytest.raises(AssertionError):
        check_outputs(model, tokenizer, dump)

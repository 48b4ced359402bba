"""Fixtures for the evaluation CLI tests: tiny layouts of every dataset, a tiny saved model with
a checkpoint, the base flags, and a spy on what the model is asked."""

import eval_layouts as layouts
import pytest
import torch

from open_flamingo import trainable_state_dict
from open_flamingo.eval import ok_vqa_utils
from open_flamingo.eval.eval_model import EvalModel
from tiny_models import build_flamingo, randomize_gates


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~40x faster on one thread on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def eval_layouts(tmp_path_factory):
    return layouts.all_layouts(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="session")
def eval_checkpoint(tmp_path_factory, tiny_lm_dirs, byte_tokenizer_dir):
    """The trainable weights of a tiny MPT Flamingo with open gates (images matter)."""
    model, _, _ = build_flamingo(tiny_lm_dirs["mpt"], byte_tokenizer_dir, seed=3)
    randomize_gates(model)
    path = tmp_path_factory.mktemp("eval_ckpt") / "checkpoint.pt"
    torch.save(trainable_state_dict(model), path)
    return path


@pytest.fixture
def model_flags(tiny_lm_dirs, byte_tokenizer_dir, eval_checkpoint):
    return [
        "--vision_encoder_path", "ViT-Tiny-16",
        "--vision_encoder_pretrained", "none",
        "--lm_path", str(tiny_lm_dirs["mpt"]),
        "--lm_tokenizer_path", str(byte_tokenizer_dir),
        "--checkpoint_path", str(eval_checkpoint),
        "--cross_attn_every_n_layers", "1",
        "--precision", "fp32",
    ]  # fmt: skip


def fake_pos_tag(words):
    """A stand-in for nltk's tagger (its data cannot be installed offline)."""
    return [(w, "NNS" if w.endswith("s") and len(w) > 3 else "NN") for w in words]


@pytest.fixture
def offline_ok_vqa_stemmer(monkeypatch):
    """OK-VQA's stemmer with injected tokenizer, tagger and lemmatizer."""
    stemmer = ok_vqa_utils.OKVQAStemmer(
        tokenize=str.split, pos_tag=fake_pos_tag, lemmatize_verb=lambda w: w.removesuffix("ing")
    )
    monkeypatch.setattr(ok_vqa_utils, "_default_stemmer", stemmer)
    return stemmer


@pytest.fixture
def model_calls(monkeypatch):
    """Records every (method, prompts, images per prompt) the tasks ask of EvalModel."""
    calls = []
    for method in ("get_outputs", "get_rank_classifications"):
        original = getattr(EvalModel, method)

        def spy(self, batch_text, batch_images, *args, _original=original, _m=method, **kwargs):
            calls.append((_m, list(batch_text), [len(images) for images in batch_images]))
            return _original(self, batch_text, batch_images, *args, **kwargs)

        monkeypatch.setattr(EvalModel, method, spy)
    return calls

"""The evaluation wrapper: batched generation and class-name scoring agree with the simple way."""

import pytest
import torch
from eval_cli_fixtures import one_thread  # noqa: F401 (autouse fixture)
from PIL import Image

from open_flamingo.eval.eval_model import EvalModel
from tiny_models import randomize_gates


def colored(color: str) -> Image.Image:
    return Image.new("RGB", (40, 30), color)


@pytest.fixture
def eval_model(make_flamingo):
    model, image_processor, tokenizer = make_flamingo("mpt")
    randomize_gates(model)
    return EvalModel(model, image_processor, tokenizer)


PROMPTS = [
    "<image>Output:a red square<|endofchunk|>\n<image>Output:",
    "<image>Output:green<|endofchunk|>\n<image>Output:",
    "Output:a blue circle on white<|endofchunk|>\n<image>Output:",  # zero-shot style: 1 image
]
IMAGES = [
    [colored("red"), colored("orange")],
    [colored("green"), colored("black")],
    [colored("blue")],
]


def test_batched_generation_equals_one_at_a_time(eval_model):
    batched = eval_model.get_outputs(PROMPTS, IMAGES, max_generation_length=8, num_beams=3)
    singles = [
        eval_model.get_outputs([text], [images], max_generation_length=8, num_beams=3)[0]
        for text, images in zip(PROMPTS, IMAGES, strict=True)
    ]
    assert batched == singles
    assert all(isinstance(text, str) for text in batched)
    # the images matter: another query image changes the beam search result somewhere
    other = [[*images[:-1], colored("white")] for images in IMAGES]
    assert eval_model.get_outputs(PROMPTS, other, max_generation_length=8) != batched


def test_prepare_images_pads_missing_images_with_zeros(eval_model):
    vision_x = eval_model.prepare_images(IMAGES)
    assert vision_x.shape == (3, 2, 1, 3, 64, 64)
    assert torch.count_nonzero(vision_x[2, 1]) == 0
    assert torch.count_nonzero(vision_x[2, 0]) > 0


def test_class_scores_cached_equal_uncached_and_the_direct_computation(eval_model):
    names = ["cat", "a dog", "x", "tench fish", "cat"]
    cached = eval_model.get_rank_classifications(PROMPTS, IMAGES, names, use_cache=True)
    uncached = eval_model.get_rank_classifications(PROMPTS, IMAGES, names, use_cache=False)
    assert cached.shape == (3, 5)
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached[:, 0], cached[:, 4])  # same name, same score

    # direct: one unpadded forward per (prompt, name); mean log-prob of the name's tokens
    model, tokenizer = eval_model.model, eval_model.tokenizer
    for row, (text, images) in enumerate(zip(PROMPTS, IMAGES, strict=True)):
        vision_x = eval_model.prepare_images([images])
        prompt = tokenizer(text, return_tensors="pt")["input_ids"]
        for col, name in enumerate(names):
            ids = tokenizer(name, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = model(vision_x, torch.cat([prompt, ids], 1)).logits[0]
            logprobs = logits[prompt.shape[1] - 1 : -1].log_softmax(-1)
            expected = logprobs.gather(1, ids[0, :, None]).mean()
            torch.testing.assert_close(cached[row, col], expected, atol=1e-4, rtol=1e-4)

    summed = eval_model.get_rank_classifications(
        PROMPTS, IMAGES, names, use_cache=True, normalize_length=False
    )
    torch.testing.assert_close(summed[:, 3], cached[:, 3] * len("tench fish"))


def test_class_scores_in_small_chunks(eval_model, monkeypatch):
    names = ["cat", "a dog", "x", "tench fish", "owl"]
    whole = eval_model.get_rank_classifications(PROMPTS, IMAGES, names)
    # a tiny memory budget: one class per chunk
    import open_flamingo.eval.eval_model as module

    monkeypatch.setattr(module, "CLASS_SCORING_BYTES", 1)
    chunked = eval_model.get_rank_classifications(PROMPTS, IMAGES, names)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_class_chunks_of_any_size_need_no_padding_and_media_are_cached_once(
    eval_model, monkeypatch
):
    """5 names in chunks of 2: the last chunk holds one name (no padding with repeats), and the
    names' media are cached once for all chunks (not re-cached after the prompts' pass)."""
    import open_flamingo.eval.eval_model as module

    names = ["cat", "a dog", "x", "tench fish", "owl"]
    whole = eval_model.get_rank_classifications(PROMPTS, IMAGES, names)
    batches, cached = [], []
    model = eval_model.model
    monkeypatch.setattr(module, "classes_per_chunk", lambda *_: 2)
    cache_media = model.cache_media
    monkeypatch.setattr(
        model, "cache_media", lambda *a, **k: cached.append(1) or cache_media(*a, **k)
    )
    model.lang_encoder.register_forward_pre_hook(
        lambda _, args, kwargs: batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    chunked = eval_model.get_rank_classifications(PROMPTS, IMAGES, names)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    assert batches == [3, 3 * 2, 3 * 2, 3 * 1]  # the prompts, then (query, name) rows
    assert cached == [1]

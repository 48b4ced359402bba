"""RICES: the most similar training images become the demonstrations (most similar last), from
computed or cached CLIP features."""

import json

import pytest
import torch
from eval_cli_fixtures import *  # noqa: F403 (fixtures)
from eval_layouts import NUM_TRAIN, path_flags

from open_flamingo.eval.captioning import load_captioning_data
from open_flamingo.eval.evaluate import main
from open_flamingo.eval.rices import RICES, clip_image_encoder, compute_features
from open_flamingo.tools import cache_rices_features


def test_finds_the_most_similar_known_features():
    # training items 0..4 are the unit vectors; queries are encoded to known directions
    features = torch.eye(5)
    queries = {
        "a": torch.tensor([0.1, 0.0, 0.9, 0.0, 0.4]),  # 2, then 4, then 0
        "b": torch.tensor([0.0, -1.0, 0.0, 0.2, 0.0]),  # 3, then 0/2/4 (0 first on ties), 1 last
    }

    def encode(images):
        vectors = torch.stack([queries[name] for name in images])
        return vectors / vectors.norm(dim=-1, keepdim=True)

    rices = RICES(features, encode)
    # least similar first: the most similar demonstration sits next to the query
    assert rices.find_indices(["a", "b"], 3) == [[0, 4, 2], [2, 0, 3]]
    assert rices.find_indices(["a"], 1) == [[2]]
    with pytest.raises(ValueError, match="only 5 items"):
        rices.find_indices(["a"], 6)


@pytest.fixture(scope="module")
def tiny_clip():
    return clip_image_encoder("ViT-Tiny-16", "none")


def test_clip_features_find_the_image_itself(eval_layouts, tiny_clip):
    args = type("Args", (), {k: str(v) for k, v in eval_layouts["coco"].items()})
    train = load_captioning_data(args, "coco").train
    features = compute_features(train, tiny_clip, batch_size=4)
    assert features.shape[0] == NUM_TRAIN
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(NUM_TRAIN))
    rices = RICES(features, tiny_clip)
    found = rices.find_indices([train[i]["image"] for i in range(NUM_TRAIN)], 2)
    assert [row[-1] for row in found] == list(range(NUM_TRAIN))
    assert all(row[0] != row[1] for row in found)


def test_cached_features_give_the_same_demonstrations(
    tmp_path, eval_layouts, model_flags, model_calls
):
    """scripts/cache_rices_features.py writes <dataset>.pkl; --rices with and without
    --cached_demonstration_features shows the same demonstrations, the most similar last."""
    keys = ["coco", "hateful_memes"]
    clip = ["--vision_encoder_path", "ViT-Tiny-16", "--vision_encoder_pretrained", "none"]
    written = cache_rices_features.main(
        ["--output_dir", str(tmp_path / "features"), *clip, "--batch_size", "4",
         *path_flags(eval_layouts, keys)]
    )  # fmt: skip
    assert [p.name for p in written] == ["coco.pkl", "hateful_memes.pkl"]
    cached = torch.load(written[0])
    assert cached.shape[0] == NUM_TRAIN

    flags = [*model_flags, *path_flags(eval_layouts, keys), "--shots", "2", "--batch_size", "2",
             "--rices", "--rices_vision_encoder_path", "ViT-Tiny-16",
             "--rices_vision_encoder_pretrained", "none"]  # fmt: skip
    main([*flags, "--predictions_dir", str(tmp_path / "computed")])
    computed_calls = list(model_calls)
    model_calls.clear()
    main(
        [*flags, "--cached_demonstration_features", str(tmp_path / "features"),
         "--predictions_dir", str(tmp_path / "cached")]
    )  # fmt: skip
    assert model_calls == computed_calls
    for name in ("coco_2shot_trial0_seed42.json", "hateful_memes_2shot_trial0_seed42.json"):
        computed = json.loads((tmp_path / "computed" / name).read_text())
        assert computed == json.loads((tmp_path / "cached" / name).read_text())

    # the demonstrations shown are the nearest training images by the cached features
    encode = clip_image_encoder("ViT-Tiny-16", "none")
    args = type("Args", (), {k: str(v) for k, v in eval_layouts["coco"].items()})
    data = load_captioning_data(args, "coco")
    rices = RICES(cached, encode)
    shown = [text for method, texts, _ in computed_calls if method == "get_outputs"
             for text in texts]  # fmt: skip
    queries = [c["image_id"] for c in json.loads((tmp_path / "computed" / name.replace(
        "hateful_memes", "coco")).read_text())]  # fmt: skip
    by_id = {data.test.describe(i)["image_id"]: i for i in range(len(data.test))}
    for text, image_id in zip(shown, queries, strict=True):
        nearest = rices.find_indices([data.test[by_id[image_id]]["image"]], 2)[0]
        captions = [data.train.describe(j)["caption"].strip() for j in nearest]
        assert text == "".join(f"<image>Output:{c}<|endofchunk|>\n" for c in captions) + (
            "<image>Output:"
        )
    with pytest.raises(ValueError, match="has features of 3 items"):
        torch.save(cached[:3], tmp_path / "features" / "coco.pkl")
        main([*flags, "--cached_demonstration_features", str(tmp_path / "features")])


def test_cache_script_refuses_a_batch_size_below_1(capsys):
    with pytest.raises(SystemExit):
        cache_rices_features.parse_args(["--output_dir", "f", "--eval_coco", "--batch_size", "0"])
    assert "--batch_size must be >= 1" in capsys.readouterr().err

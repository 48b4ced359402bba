"""Readers of the official evaluation layouts, on tiny instances built on the fly."""

import ast
import json

import eval_layouts as layouts
import pytest
from PIL import Image

from conftest import REPO, require
from open_flamingo.eval.eval_datasets import (
    HM_CLASSNAMES,
    IMAGENET_CLASSNAMES,
    CaptionDataset,
    HatefulMemesDataset,
    ImageNetDataset,
    VQADataset,
)

UPSTREAM_CLASSIFICATION_UTILS = (
    REPO / ".cache/upstream-site/open_flamingo/eval/classification_utils.py"
)


def upstream_list(name: str) -> list[str]:
    require(UPSTREAM_CLASSIFICATION_UTILS.is_file(), "upstream reference missing: `make upstream`")
    tree = ast.parse(UPSTREAM_CLASSIFICATION_UTILS.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not in upstream's classification_utils.py")


def test_class_names_are_upstreams():
    upstream = upstream_list("IMAGENET_CLASSNAMES")
    assert len(upstream) == 1000
    assert upstream == IMAGENET_CLASSNAMES
    assert IMAGENET_CLASSNAMES[0] == "tench" and IMAGENET_CLASSNAMES[999] == "toilet paper"
    # duplicated names, kept as upstream has them
    assert len(set(IMAGENET_CLASSNAMES)) == 998
    assert [i for i, n in enumerate(IMAGENET_CLASSNAMES) if n == "missile"] == [657, 744]
    assert HM_CLASSNAMES == upstream_list("HM_CLASSNAMES") == ["no", "yes"]


def test_coco_karpathy(tmp_path):
    flags = layouts.karpathy(tmp_path, "coco")
    kwargs = dict(
        image_train_dir_path=flags["coco_train_image_dir_path"],
        image_val_dir_path=flags["coco_val_image_dir_path"],
        annotations_path=flags["coco_karpathy_json_path"],
        dataset_name="coco",
    )
    train, test = CaptionDataset(**kwargs, is_train=True), CaptionDataset(**kwargs, is_train=False)
    assert (len(train), len(test)) == (layouts.NUM_TRAIN, layouts.NUM_TEST)
    item = test[1]
    assert item["image_id"] == 1000 + layouts.NUM_TRAIN + 1  # cocoid
    assert item["caption"] == f" {layouts.caption(layouts.NUM_TRAIN + 1)}. "  # first, raw
    assert test.image_path(1).parent.name == "val2014"
    assert train.image_path(0).parent.name == "train2014"
    assert isinstance(item["image"], Image.Image) and item["image"].mode == "RGB"
    assert item["image"].size == (32, 24)


def test_karpathy_restval_is_not_train(tmp_path):
    flags = layouts.karpathy(tmp_path, "coco")
    data = json.loads(flags["coco_karpathy_json_path"].read_text())
    data["images"][0]["split"] = "restval"
    flags["coco_karpathy_json_path"].write_text(json.dumps(data))
    train = CaptionDataset(
        flags["coco_train_image_dir_path"], flags["coco_karpathy_json_path"], True, "coco"
    )
    assert len(train) == layouts.NUM_TRAIN - 1


def test_flickr_karpathy_ids_are_file_stems(tmp_path):
    flags = layouts.karpathy(tmp_path, "flickr")
    test = CaptionDataset(
        flags["flickr_image_dir_path"], flags["flickr_karpathy_json_path"], False, "flickr"
    )
    assert test.describe(0)["image_id"] == str(5000 + layouts.NUM_TRAIN)
    assert test[0]["image"].size == (32, 24)


@pytest.mark.parametrize("name", ["vqav2", "ok_vqa", "vizwiz", "textvqa"])
def test_vqa_layouts(tmp_path, name):
    flags = layouts.vqa(tmp_path, name)
    image_dir = flags.get("textvqa_image_dir_path") or flags[f"{name}_test_image_dir_path"]
    test = VQADataset(
        image_dir,
        flags[f"{name}_test_questions_json_path"],
        flags[f"{name}_test_annotations_json_path"],
        is_train=False,
        dataset_name=name,
    )
    assert len(test) == layouts.NUM_TEST
    item = test[2]
    i = layouts.NUM_TRAIN + 2
    assert item["question"] == "What color?" and item["question_id"] == 7000 + i
    assert item["answers"][:6] == [layouts.COLORS[i]] * 6 and len(item["answers"]) == 10
    expected_name = {
        "vqav2": f"COCO_val2014_{300 + i:012d}.jpg",
        "ok_vqa": f"COCO_val2014_{300 + i:012d}.jpg",
        "vizwiz": f"VizWiz_test_{i:08d}.jpg",
        "textvqa": f"{i:04x}abcd.jpg",
    }[name]
    assert test.image_path(2).name == expected_name
    assert item["image"].size == (32, 24)


def test_vqa_answers_matched_by_question_id(tmp_path):
    flags = layouts.vqa(tmp_path, "vqav2")
    path = flags["vqav2_test_annotations_json_path"]
    data = json.loads(path.read_text())
    data["annotations"].reverse()
    path.write_text(json.dumps(data))
    test = VQADataset(
        flags["vqav2_test_image_dir_path"], flags["vqav2_test_questions_json_path"], path,
        False, "vqav2",
    )  # fmt: skip
    for i in range(len(test)):
        assert test.describe(i)["answers"][0] == layouts.COLORS[layouts.NUM_TRAIN + i]
    # a question without annotation is an error naming it
    data["annotations"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="question_id 7006"):
        VQADataset(
            flags["vqav2_test_image_dir_path"], flags["vqav2_test_questions_json_path"], path,
            False, "vqav2",
        )  # fmt: skip


def test_vqa_coco_folder_name_is_checked(tmp_path):
    flags = layouts.vqa(tmp_path, "vqav2")
    renamed = tmp_path / "images"
    flags["vqav2_test_image_dir_path"].rename(renamed)
    with pytest.raises(ValueError, match="train2014"):
        VQADataset(renamed, flags["vqav2_test_questions_json_path"], None, False, "vqav2")


def test_hateful_memes_jsonl(tmp_path):
    flags = layouts.hateful_memes(tmp_path)
    test = HatefulMemesDataset(
        flags["hateful_memes_image_dir_path"], flags["hateful_memes_test_annotations_json_path"]
    )
    assert len(test) == 4
    item = test[1]
    assert item["id"] == 40000 + layouts.NUM_TRAIN + 1
    assert item["ocr"] == f"hi {layouts.NUM_TRAIN + 1}"
    assert (item["class_id"], item["class_name"]) == (1, "yes")
    assert test.describe(0)["class_name"] == "no"
    assert item["image"].size == (32, 24)


def test_imagenet_folders_map_to_class_names(tmp_path):
    layouts.imagenet(tmp_path)
    val = ImageNetDataset(tmp_path / "val")
    assert len(val) == 6
    names = [val.describe(i)["class_name"] for i in range(len(val))]
    assert names == ["tench"] * 2 + ["goldfish"] * 2 + ["great white shark"] * 2
    assert [val.describe(i)["class_id"] for i in range(len(val))] == [0, 0, 1, 1, 2, 2]
    assert val[3]["image"].size == (32, 24)


def test_missing_and_broken_images_are_named(tmp_path):
    flags = layouts.hateful_memes(tmp_path)
    test = HatefulMemesDataset(
        flags["hateful_memes_image_dir_path"], flags["hateful_memes_test_annotations_json_path"]
    )
    missing = test.image_path(0)
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        test[0]
    broken = test.image_path(1)
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"Cannot decode image {broken}"):
        test[1]


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CaptionDataset(tmp_path, tmp_path / "nope.json", True, "coco")
    with pytest.raises(ValueError, match="No path given"):
        VQADataset(tmp_path, None, None, False, "textvqa")

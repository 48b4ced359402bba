"""Readers for the official annotation layouts of the evaluation datasets.

Every dataset is a `torch.utils.data.Dataset` of dicts with upstream OpenFlamingo's keys, the
PIL image under "image" (loaded in `__getitem__`, converted to RGB). `describe(i)` returns the
same dict without the image, for prompt building and tests.

- `CaptionDataset`: Karpathy split JSON (`dataset_coco.json`, `dataset_flickr30k.json`).
- `VQADataset`: VQA questions / annotations JSON (VQAv2, OK-VQA, and the VQA-format TextVQA and
  VizWiz files that upstream reads).
- `HatefulMemesDataset`: the challenge's JSONL files.
- `ImageNetDataset`: ImageFolder-style class folders (`root/<wnid>/<image>`).
"""

import json
import os
from pathlib import Path

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES as _OPEN_CLIP_IMAGENET_CLASSNAMES
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .json_files import read_json

# Upstream's list (open_flamingo/eval/classification_utils.py, from wise-ft) is identical to
# open_clip's, name for name (checked by tests/test_eval_datasets.py). It has 998 distinct names:
# "missile" (657, 744) and "sunglasses" (836, 837) appear twice, as upstream.
IMAGENET_CLASSNAMES: list[str] = list(_OPEN_CLIP_IMAGENET_CLASSNAMES)
HM_CLASSNAMES: list[str] = ["no", "yes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VQA_DATASETS = ("vqav2", "ok_vqa", "vizwiz", "textvqa")
COCO_IMAGE_SPLITS = ("train2014", "val2014", "test2015")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image (RGB); a clear error naming the file if it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Cannot decode image {path}: {error}") from error


def _require_dir(path, what: str) -> Path:
    if path is None:
        raise ValueError(f"No path given for the {what}.")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return Path(path)


class _EvalDataset(Dataset):
    """Items are `describe(i)` plus the decoded image from `image_path(i)`."""

    def describe(self, idx: int) -> dict:
        raise NotImplementedError

    def image_path(self, idx: int) -> Path:
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict:
        return {"image": load_image(self.image_path(idx)), **self.describe(idx)}


class CaptionDataset(_EvalDataset):
    """Karpathy split: `{"images": [{"filename", "filepath", "split", "sentences": [{"raw"}],
    "cocoid"?}]}`. Train items are split "train" (not "restval"), test items split "test".

    COCO images live in `image_train_dir_path` (filepath "train2014") or `image_val_dir_path`;
    Flickr30k has one image folder. The demonstration caption is the first sentence; the image
    id is COCO's `cocoid`, or the Flickr file name without extension (as upstream)."""

    def __init__(
        self,
        image_train_dir_path,
        annotations_path,
        is_train: bool,
        dataset_name: str,
        image_val_dir_path=None,
    ):
        if dataset_name not in ("coco", "flickr"):
            raise ValueError(f"Unknown captioning dataset {dataset_name!r} (coco or flickr)")
        self.dataset_name = dataset_name
        self.image_train_dir = _require_dir(image_train_dir_path, f"{dataset_name} image folder")
        self.image_val_dir = image_val_dir_path and _require_dir(
            image_val_dir_path, f"{dataset_name} val image folder"
        )
        data = read_json(annotations_path, f"{dataset_name} Karpathy split")
        if "images" not in data:
            raise ValueError(f"{annotations_path} has no 'images' list: not a Karpathy split file")
        split = "train" if is_train else "test"
        self.annotations = [image for image in data["images"] if image["split"] == split]

    def __len__(self) -> int:
        return len(self.annotations)

    def image_path(self, idx: int) -> Path:
        ann = self.annotations[idx]
        if self.dataset_name == "coco" and ann["filepath"] != "train2014":
            if self.image_val_dir is None:
                raise ValueError(
                    f"{ann['filename']} is in {ann['filepath']}: pass the COCO val image folder"
                )
            return self.image_val_dir / ann["filename"]
        return self.image_train_dir / ann["filename"]

    def describe(self, idx: int) -> dict:
        ann = self.annotations[idx]
        flickr_id = ann["filename"].split(".")[0]
        image_id = ann["cocoid"] if self.dataset_name == "coco" else flickr_id
        return {"caption": ann["sentences"][0]["raw"], "image_id": image_id}


class VQADataset(_EvalDataset):
    """VQA layout: questions `{"questions": [{"image_id", "question", "question_id"}]}` and
    optional annotations `{"annotations": [{"question_id", "answers": [{"answer"}]}]}`.

    Image files: VQAv2 / OK-VQA `COCO_<split>_<image_id:012d>.jpg` where <split> is the image
    folder's name (train2014, val2014 or test2015); VizWiz `<image_id>` (a file name); TextVQA
    `<image_id>.jpg`. Answers are matched to questions by question_id (upstream pairs them by
    position, which is the same for the official files)."""

    def __init__(
        self, image_dir_path, question_path, annotations_path, is_train: bool, dataset_name: str
    ):
        if dataset_name not in VQA_DATASETS:
            raise ValueError(f"Unknown VQA dataset {dataset_name!r}; one of {VQA_DATASETS}")
        self.dataset_name = dataset_name
        self.is_train = is_train
        self.image_dir = _require_dir(image_dir_path, f"{dataset_name} image folder")
        self.questions = read_json(question_path, f"{dataset_name} questions")["questions"]
        self.answers = None
        if annotations_path is not None:
            annotations = read_json(annotations_path, f"{dataset_name} annotations")
            by_id = {a["question_id"]: a for a in annotations["annotations"]}
            missing = [q["question_id"] for q in self.questions if q["question_id"] not in by_id]
            if missing:
                raise ValueError(
                    f"{annotations_path} has no answers for {len(missing)} question(s) of "
                    f"{question_path}, e.g. question_id {missing[0]}"
                )
            self.answers = [[a["answer"] for a in by_id[q["question_id"]]["answers"]]
                            for q in self.questions]  # fmt: skip
        elif is_train:
            raise ValueError(f"The {dataset_name} train split needs its annotations JSON.")
        if dataset_name in ("vqav2", "ok_vqa"):
            self.coco_split = self.image_dir.resolve().name
            if self.coco_split not in COCO_IMAGE_SPLITS:
                raise ValueError(
                    f"{dataset_name} image folder must be named one of {COCO_IMAGE_SPLITS} "
                    f"(COCO file names contain it), got {image_dir_path}"
                )

    def __len__(self) -> int:
        return len(self.questions)

    def image_path(self, idx: int) -> Path:
        image_id = self.questions[idx]["image_id"]
        if self.dataset_name in ("vqav2", "ok_vqa"):
            return self.image_dir / f"COCO_{self.coco_split}_{image_id:012d}.jpg"
        if self.dataset_name == "vizwiz":
            return self.image_dir / image_id
        return self.image_dir / f"{image_id}.jpg"  # textvqa

    def describe(self, idx: int) -> dict:
        question = self.questions[idx]
        item = {"question": question["question"], "question_id": question["question_id"]}
        if self.answers is not None:
            item["answers"] = self.answers[idx]
        return item


class HatefulMemesDataset(_EvalDataset):
    """JSONL lines `{"id", "img": "img/01235.png", "label": 0 or 1, "text"}`; the image is
    `image_dir_path/<basename of img>`. class_name is "yes" (hateful) or "no"."""

    def __init__(self, image_dir_path, annotations_path):
        self.image_dir = _require_dir(image_dir_path, "Hateful Memes image folder")
        if annotations_path is None or not Path(annotations_path).is_file():
            raise FileNotFoundError(f"Hateful Memes JSONL not found: {annotations_path}")
        self.annotations = []
        for line_no, line in enumerate(Path(annotations_path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            ann = json.loads(line)
            if ann.get("label") not in (0, 1):
                raise ValueError(
                    f"{annotations_path}:{line_no}: 'label' must be 0 or 1 (unlabelled test "
                    "sets cannot be scored)"
                )
            self.annotations.append(ann)

    def __len__(self) -> int:
        return len(self.annotations)

    def image_path(self, idx: int) -> Path:
        return self.image_dir / self.annotations[idx]["img"].split("/")[-1]

    def describe(self, idx: int) -> dict:
        ann = self.annotations[idx]
        return {
            "id": ann["id"],
            "ocr": ann["text"],
            "class_name": HM_CLASSNAMES[ann["label"]],
            "class_id": ann["label"],
        }


class ImageNetDataset(_EvalDataset):
    """ImageFolder layout `root/<class folder>/<image>`: class folders sorted by name get ids
    0, 1, ..., named by IMAGENET_CLASSNAMES (the wnid order n01440764, ... of ILSVRC-2012).
    A root with fewer than 1000 folders maps them to the first class names, as ImageFolder plus
    upstream's list would."""

    def __init__(self, root):
        root = _require_dir(root, "ImageNet split folder")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not classes:
            raise FileNotFoundError(f"No class folders in {root}")
        if len(classes) > len(IMAGENET_CLASSNAMES):
            raise ValueError(f"{root} has {len(classes)} class folders; ImageNet has 1000")
        self.classes = classes
        self.samples: list[tuple[Path, int]] = []
        for class_id, folder in enumerate(classes):
            files = sorted(
                p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
            )
            self.samples.extend((path, class_id) for path in files)
        if not self.samples:
            raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, idx: int) -> Path:
        return self.samples[idx][0]

    def describe(self, idx: int) -> dict:
        class_id = self.samples[idx][1]
        return {"id": idx, "class_id": class_id, "class_name": IMAGENET_CLASSNAMES[class_id]}

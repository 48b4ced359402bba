"""Tiny instances of the official evaluation layouts, written on the fly, and the CLI flags that
point at them (upstream OpenFlamingo's flag names)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "gray", "pink"]
NUM_TRAIN, NUM_TEST = 6, 4


def save_image(path: Path, index: int) -> Path:
    """A small distinct image: a colour with seeded noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(index)
    base = np.array(Image.new("RGB", (1, 1), COLORS[index % len(COLORS)]).getpixel((0, 0)))
    pixels = np.clip(base + rng.integers(-40, 40, (24, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def caption(i: int) -> str:
    return f"a {COLORS[i % len(COLORS)]} square"


def karpathy(root: Path, name: str) -> dict:
    """COCO (train2014 / val2014 folders, cocoid) or Flickr30k (one folder, file-name ids)."""
    images, refs = [], {"images": [], "annotations": []}
    for i in range(NUM_TRAIN + NUM_TEST):
        split = "train" if i < NUM_TRAIN else "test"
        sentences = [{"raw": f" {caption(i)}. "}, {"raw": f"{caption(i)} on a table"}]
        if name == "coco":
            folder = "train2014" if split == "train" else "val2014"
            filename = f"COCO_{folder}_{1000 + i:012d}.jpg"
            entry = {"filepath": folder, "filename": filename, "cocoid": 1000 + i}
            save_image(root / folder / filename, i)
            image_id = 1000 + i
        else:
            filename = f"{5000 + i}.jpg"
            entry = {"filename": filename, "imgid": i}
            save_image(root / "flickr30k_images" / filename, i)
            image_id = 5000 + i  # the coco-style references use int ids
        images.append({**entry, "split": split, "sentences": sentences})
        if split == "test":
            refs["images"].append({"id": image_id})
            for k, s in enumerate(sentences):
                refs["annotations"].append(
                    {"image_id": image_id, "id": 10 * image_id + k, "caption": s["raw"]}
                )
    karpathy_json = write_json(root / f"dataset_{name}.json", {"images": images, "dataset": name})
    refs_json = write_json(root / f"{name}_references.json", refs)
    if name == "coco":
        return {
            "coco_train_image_dir_path": root / "train2014",
            "coco_val_image_dir_path": root / "val2014",
            "coco_karpathy_json_path": karpathy_json,
            "coco_annotations_json_path": refs_json,
        }
    return {
        "flickr_image_dir_path": root / "flickr30k_images",
        "flickr_karpathy_json_path": karpathy_json,
        "flickr_annotations_json_path": refs_json,
    }


def vqa(root: Path, name: str) -> dict:
    """VQA-format questions and annotations; image names as each dataset's reader expects."""
    flags = {}
    for split, offset, count in (("train", 0, NUM_TRAIN), ("test", NUM_TRAIN, NUM_TEST)):
        questions, annotations = [], []
        if name in ("vqav2", "ok_vqa"):
            folder = root / ("train2014" if split == "train" else "val2014")
        else:
            folder = root / "images"
        for i in range(offset, offset + count):
            if name in ("vqav2", "ok_vqa"):
                image_id = 300 + i
                save_image(folder / f"COCO_{folder.name}_{image_id:012d}.jpg", i)
            elif name == "vizwiz":
                image_id = f"VizWiz_{split}_{i:08d}.jpg"
                save_image(folder / image_id, i)
            else:  # textvqa
                image_id = f"{i:04x}abcd"
                save_image(folder / f"{image_id}.jpg", i)
            color = COLORS[i % len(COLORS)]
            qid = 7000 + i
            questions.append({"image_id": image_id, "question": "What color?", "question_id": qid})
            answers = [color] * 6 + ["red"] * 2 + ["two dogs", "yes"]
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)],
                }
            )
        q = write_json(root / f"{split}_questions.json", {"questions": questions})
        a = write_json(root / f"{split}_annotations.json", {"annotations": annotations})
        if name == "textvqa":
            flags["textvqa_image_dir_path"] = folder
        else:
            flags[f"{name}_{split}_image_dir_path"] = folder
        flags[f"{name}_{split}_questions_json_path"] = q
        flags[f"{name}_{split}_annotations_json_path"] = a
    return flags


IMAGENET_FOLDERS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark


def imagenet(root: Path) -> dict:
    for split, per_class in (("train", 2), ("val", 2)):
        for c, wnid in enumerate(IMAGENET_FOLDERS):
            for k in range(per_class):
                index = 10 * c + k + (0 if split == "train" else 5)
                save_image(root / split / wnid / f"{split}_{index}.JPEG", index)
    return {"imagenet_root": root}


def hateful_memes(root: Path) -> dict:
    flags = {"hateful_memes_image_dir_path": root / "img"}
    for split, ids in (("train", range(NUM_TRAIN)), ("dev", range(NUM_TRAIN, NUM_TRAIN + 4))):
        lines = []
        for i in ids:
            save_image(root / "img" / f"{40000 + i}.png", i)
            lines.append(
                {"id": 40000 + i, "img": f"img/{40000 + i}.png", "label": i % 2, "text": f"hi {i}"}
            )
        path = root / f"{split}.jsonl"
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        key = "train" if split == "train" else "test"
        flags[f"hateful_memes_{key}_annotations_json_path"] = path
    return flags


def all_layouts(root: Path) -> dict[str, dict]:
    """Dataset key (as in --eval_<key>) -> its path flags."""
    return {
        "flickr30": karpathy(root / "flickr30k", "flickr30k"),
        "coco": karpathy(root / "coco", "coco"),
        "vqav2": vqa(root / "vqav2", "vqav2"),
        "ok_vqa": vqa(root / "okvqa", "ok_vqa"),
        "vizwiz": vqa(root / "vizwiz", "vizwiz"),
        "textvqa": vqa(root / "textvqa", "textvqa"),
        "imagenet": imagenet(root / "imagenet"),
        "hateful_memes": hateful_memes(root / "hateful_memes"),
    }


def path_flags(layouts: dict[str, dict], keys) -> list[str]:
    flags = []
    for key in keys:
        flags.append(f"--eval_{key}")
        for flag, value in layouts[key].items():
            flags += [f"--{flag}", str(value)]
    return flags

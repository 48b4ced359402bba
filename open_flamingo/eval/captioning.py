"""Captioning (COCO and Flickr30k Karpathy test splits), scored by CIDEr (x 100, as upstream).

Decoding: beam search 3, at most 20 new tokens, length penalty 0. A caption is the generation
cut at "Output" (`postprocess_captioning_generation`) with double quotes removed.
"""

import json

from .coco_metric import compute_cider, postprocess_captioning_generation
from .eval_datasets import CaptionDataset
from .prompts import caption_prompt, with_demonstrations
from .trial import TaskData, gather_predictions, predictions_file, trial_batches, write_json

MAX_NEW_TOKENS = 20
NUM_BEAMS = 3


def load_captioning_data(args, name: str, with_test: bool = True) -> TaskData:
    """`name` is "coco" or "flickr" (flag prefix `--coco_` / `--flickr_`)."""
    if name == "coco":
        folders = dict(
            image_train_dir_path=args.coco_train_image_dir_path,
            image_val_dir_path=args.coco_val_image_dir_path,
            annotations_path=args.coco_karpathy_json_path,
        )
    else:  # Flickr30k has one image folder
        folders = dict(
            image_train_dir_path=args.flickr_image_dir_path,
            annotations_path=args.flickr_karpathy_json_path,
        )
    train = CaptionDataset(**folders, is_train=True, dataset_name=name)
    test = CaptionDataset(**folders, is_train=False, dataset_name=name) if with_test else None
    return TaskData(name, train, test)


def captioning_query(demonstrations: list[dict], num_shots: int) -> str:
    """Demonstrations `<image>Output:{caption}<|endofchunk|>\\n`, then `<image>Output:`."""
    shown = [caption_prompt(item["caption"].strip()) for item in demonstrations]
    return with_demonstrations(shown, caption_prompt(), num_shots, separator="\n")


def _reference_ids(annotations_path) -> set:
    with open(annotations_path) as f:
        annotations = json.load(f)
    ids = {image["id"] for image in annotations.get("images", [])}
    return ids | {a["image_id"] for a in annotations["annotations"]}


def _matching_id(image_id, reference_ids: set):
    """Flickr ids are file-name stems ("1000092795"); use the int when the annotations do."""
    digits = isinstance(image_id, str) and image_id.isdigit()
    if image_id not in reference_ids and digits and int(image_id) in reference_ids:
        return int(image_id)
    return image_id


def evaluate_captioning(data: TaskData, *, args, world, eval_model, num_shots, seed, trial):
    """CIDEr x 100 on rank 0 (None on other ranks)."""
    annotations_path = (
        args.coco_annotations_json_path
        if data.name == "coco"
        else args.flickr_annotations_json_path
    )
    if annotations_path is None:
        raise ValueError(f"Pass --{data.name}_annotations_json_path (COCO-format references).")
    predictions = []
    for batch in trial_batches(data, args=args, world=world, num_shots=num_shots, seed=seed):
        texts, images = [], []
        for query, demos in zip(batch.queries, batch.demonstrations, strict=True):
            texts.append(captioning_query(demos, num_shots))
            shown = [demo["image"] for demo in demos] if num_shots > 0 else []
            images.append([*shown, query["image"]])
        outputs = eval_model.get_outputs(
            texts, images, max_generation_length=MAX_NEW_TOKENS, num_beams=NUM_BEAMS
        )
        for query, output in zip(batch.queries, outputs, strict=True):
            caption = postprocess_captioning_generation(output).replace('"', "")
            predictions.append(
                (batch.position, {"image_id": query["image_id"], "caption": caption, "raw": output})
            )
    predictions = gather_predictions(predictions, world)
    if predictions is None:
        return None
    reference_ids = _reference_ids(annotations_path)
    by_image = {}  # one caption per image (upstream keys its predictions by image id)
    for prediction in predictions:
        by_image[_matching_id(prediction["image_id"], reference_ids)] = prediction
    results = [{**p, "image_id": image_id} for image_id, p in by_image.items()]
    with predictions_file(args, data.name, num_shots, seed, trial) as path:
        write_json(path, results)
        return compute_cider(path, annotations_path)["CIDEr"] * 100.0

"""Classification by class-name log-likelihood: ImageNet (top-1 accuracy over the 1000 class
names) and Hateful Memes (ROC AUC of P("yes") over {"no", "yes"}).

Each class name is scored as the continuation of the prompt (mean log-probability of its tokens,
`EvalModel.get_rank_classifications`); the prompt's media and KV cache are computed once.
Scores are fractions (0-1), as upstream reports them.
"""

import logging
import os

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .eval_datasets import HM_CLASSNAMES, IMAGENET_CLASSNAMES, HatefulMemesDataset, ImageNetDataset
from .prompts import hateful_memes_prompt, imagenet_prompt, with_demonstrations
from .trial import TaskData, gather_predictions, predictions_file, trial_batches, write_json

logger = logging.getLogger(__name__)

CLASS_NAMES = {"imagenet": IMAGENET_CLASSNAMES, "hateful_memes": HM_CLASSNAMES}


def load_classification_data(args, name: str, with_test: bool = True) -> TaskData:
    if name == "imagenet":
        if args.imagenet_root is None:
            raise ValueError("Pass --imagenet_root (a folder with train/ and val/ class folders).")
        train = ImageNetDataset(os.path.join(args.imagenet_root, "train"))
        test = ImageNetDataset(os.path.join(args.imagenet_root, "val")) if with_test else None
    else:
        image_dir = args.hateful_memes_image_dir_path
        train = HatefulMemesDataset(image_dir, args.hateful_memes_train_annotations_json_path)
        test_path = args.hateful_memes_test_annotations_json_path
        test = HatefulMemesDataset(image_dir, test_path) if with_test else None
    return TaskData(name, train, test)


def item_prompt(name: str, item: dict, label: str | None) -> str:
    if name == "imagenet":
        return imagenet_prompt(label)
    return hateful_memes_prompt(item["ocr"], label)


def classification_query(name: str, demonstrations: list[dict], query: dict, num_shots: int):
    """Labelled demonstrations joined without separator, then the query prompt up to the label:
    `<image>Output:` (ImageNet) or `<image>is an image with: '{text}' ... Answer:`."""
    shown = [item_prompt(name, item, item["class_name"]) for item in demonstrations]
    return with_demonstrations(shown, item_prompt(name, query, None), num_shots)


def roc_auc(labels: list[int], scores: list[float]) -> float:
    """scikit-learn's ROC AUC (ties count half), as upstream computes it; NaN with a warning,
    instead of sklearn's ValueError, when only one class is present (a small trial)."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        logger.warning("ROC AUC is undefined with a single class among the labels.")
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def evaluate_classification(data: TaskData, *, args, world, eval_model, num_shots, seed, trial):
    """ImageNet top-1 accuracy or Hateful Memes ROC AUC on rank 0 (None on other ranks)."""
    class_names = CLASS_NAMES[data.name]
    ensemble = args.classification_prompt_ensembling
    predictions = []
    batches = trial_batches(
        data, args=args, world=world, num_shots=num_shots, seed=seed, ensemble_prompts=ensemble
    )
    for batch in batches:
        per_order = []
        num_orders = len(batch.permutations[0])
        for order in range(num_orders):
            texts, images = [], []
            for row, (query, demos) in enumerate(
                zip(batch.queries, batch.demonstrations, strict=True)
            ):
                demos = [demos[i] for i in batch.permutations[row][order]]
                texts.append(classification_query(data.name, demos, query, num_shots))
                shown = [demo["image"] for demo in demos] if num_shots > 0 else []
                images.append([*shown, query["image"]])
            per_order.append(
                eval_model.get_rank_classifications(
                    texts,
                    images,
                    class_names,
                    use_cache=not args.no_caching_for_classification,
                    normalize_length=True,
                )
            )
        logprobs = torch.stack(per_order).mean(0)  # (B, C)
        best = logprobs.argmax(dim=1)  # first of equal maxima, as torch.topk
        # probability of the predicted class among all classes
        confidence = (logprobs.max(dim=1).values - logprobs.logsumexp(dim=1)).exp()
        for row, query in enumerate(batch.queries):
            prediction = {
                "id": query["id"],
                "gt_label": query["class_name"],
                "pred_label": class_names[best[row]],
                "pred_score": confidence[row].item(),
            }
            predictions.append((batch.position, prediction))
    predictions = gather_predictions(predictions, world)
    if predictions is None:
        return None
    with predictions_file(args, data.name, num_shots, seed, trial) as path:
        write_json(path, predictions)
    if data.name == "hateful_memes":
        # P("yes"): the confidence when "yes" is predicted, else its complement
        p_yes = [
            p["pred_score"] if p["pred_label"] == "yes" else 1 - p["pred_score"]
            for p in predictions
        ]
        return roc_auc([p["gt_label"] == "yes" for p in predictions], p_yes)
    correct = sum(p["gt_label"] == p["pred_label"] for p in predictions)
    return correct / len(predictions)

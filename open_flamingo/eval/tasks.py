"""The evaluation's body: every selected dataset read first, then the model, then each task
over its shots and trials, and the results table. The command line is evaluate.py, which first
makes sure the eval extra is installed."""

import json
import logging
from dataclasses import dataclass

import numpy as np

from open_flamingo.eval.captioning import evaluate_captioning, load_captioning_data
from open_flamingo.eval.classification import evaluate_classification, load_classification_data
from open_flamingo.eval.distributed import World, barrier
from open_flamingo.eval.eval_model import EvalModel
from open_flamingo.eval.rices import RICES, clip_image_encoder
from open_flamingo.eval.vqa import evaluate_vqa, load_vqa_data

logger = logging.getLogger("open_flamingo.eval")


@dataclass(frozen=True)
class Task:
    dataset: str  # internal name: reader, RICES file, prediction files
    title: str
    metric: str
    load: object
    evaluate: object


# results-file key (= the --eval_ flag's suffix) -> task, in upstream's evaluation order
TASKS = {
    "flickr30": Task("flickr", "Flickr30k", "CIDEr", load_captioning_data, evaluate_captioning),
    "coco": Task("coco", "COCO", "CIDEr", load_captioning_data, evaluate_captioning),
    "ok_vqa": Task("ok_vqa", "OK-VQA", "VQA accuracy", load_vqa_data, evaluate_vqa),
    "vqav2": Task("vqav2", "VQAv2", "VQA accuracy", load_vqa_data, evaluate_vqa),
    "vizwiz": Task("vizwiz", "VizWiz", "VQA accuracy", load_vqa_data, evaluate_vqa),
    "textvqa": Task("textvqa", "TextVQA", "VQA accuracy", load_vqa_data, evaluate_vqa),
    "imagenet": Task(
        "imagenet", "ImageNet", "top-1 accuracy", load_classification_data, evaluate_classification
    ),
    "hateful_memes": Task(
        "hateful_memes", "Hateful Memes", "ROC AUC", load_classification_data,
        evaluate_classification,
    ),
}  # fmt: skip


def summarize(shots: int, scores: list[float]) -> dict:
    """One results entry: every trial's score, their mean and (population) std, as upstream."""
    scores = [float(s) for s in scores]
    return {
        "shots": shots,
        "trials": scores,
        "mean": float(np.nanmean(scores)),
        "stddev": float(np.nanstd(scores)),
    }


def format_table(results: dict) -> str:
    rows = [("dataset", "metric", "shots", "mean", "std", "trials")]
    for key, entries in results.items():
        task = TASKS[key]
        for entry in entries:
            trials = " ".join(f"{s:.4g}" for s in entry["trials"])
            mean, std = f"{entry['mean']:.4g}", f"{entry['stddev']:.3g}"
            rows.append((task.title, task.metric, str(entry["shots"]), mean, std, trials))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def evaluate_task(key: str, data, args, world: World, eval_model: EvalModel) -> list[dict]:
    task = TASKS[key]
    entries = []
    for shots in args.shots:
        scores = []
        for trial, seed in enumerate(args.trial_seeds):
            score = task.evaluate(
                data,
                args=args,
                world=world,
                eval_model=eval_model,
                num_shots=shots,
                seed=seed,
                trial=trial,
            )
            if world.is_main and score is not None:
                print(f"{task.title} shots {shots} trial {trial} (seed {seed}) "
                      f"{task.metric}: {score:.4f}", flush=True)  # fmt: skip
                scores.append(score)
        if world.is_main and scores:
            entries.append(summarize(shots, scores))
    return entries


def run(args, world) -> dict | None:
    """Evaluate every selected dataset; the results on rank 0 (None on other ranks)."""
    # read every selected dataset first: a wrong path fails before the model loads
    selected = [key for key in TASKS if getattr(args, f"eval_{key}")]
    datasets = {key: TASKS[key].load(args, TASKS[key].dataset) for key in selected}
    if args.rices:
        encode = clip_image_encoder(
            args.rices_vision_encoder_path, args.rices_vision_encoder_pretrained, world.device
        )
        for data in datasets.values():
            data.rices = RICES.for_dataset(
                data.train, data.name, encode, args.batch_size, args.cached_demonstration_features
            )

    eval_model = EvalModel.from_args(args, world.device)
    results = {}
    for key in selected:
        if world.is_main:
            print(f"Evaluating on {TASKS[key].title}...", flush=True)
        entries = evaluate_task(key, datasets[key], args, world, eval_model)
        if world.is_main and entries:
            results[key] = entries
    barrier(world)
    if not world.is_main:
        return None
    print(format_table(results), flush=True)
    if args.results_file:
        with open(args.results_file, "w") as f:
            json.dump(results, f, indent=2)
    return results

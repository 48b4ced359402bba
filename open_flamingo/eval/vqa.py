"""Visual question answering (VQAv2, OK-VQA, TextVQA, VizWiz), scored by VQA accuracy (%).

Decoding: beam search 3, at most 5 new tokens (10 for TextVQA), length penalty 0. An answer is
cut at Question/Answer/Short and at ", " (`postprocess_vqa_generation`); OK-VQA answers are
also stemmed (`postprocess_ok_vqa_generation`, which needs nltk data).
"""

import logging
from pathlib import Path

from . import ok_vqa_utils
from .eval_datasets import VQADataset
from .prompts import vqa_prompt, with_demonstrations
from .trial import TaskData, gather_predictions, predictions_file, trial_batches, write_json
from .vqa_metric import compute_vqa_accuracy, postprocess_vqa_generation

logger = logging.getLogger(__name__)

NUM_BEAMS = 3
MAX_NEW_TOKENS = {"vqav2": 5, "ok_vqa": 5, "vizwiz": 5, "textvqa": 10}


def vqa_paths(args, name: str) -> dict:
    """The flags of dataset `name`: train/test image folders, questions and annotations."""
    paths = {
        split: {
            "image_dir_path": getattr(args, f"{name}_{split}_image_dir_path", None),
            "question_path": getattr(args, f"{name}_{split}_questions_json_path"),
            "annotations_path": getattr(args, f"{name}_{split}_annotations_json_path"),
        }
        for split in ("train", "test")
    }
    if name == "textvqa":  # one image folder for both splits
        for split in paths.values():
            split["image_dir_path"] = args.textvqa_image_dir_path
    return paths


def load_vqa_data(args, name: str, with_test: bool = True) -> TaskData:
    paths = vqa_paths(args, name)
    train = VQADataset(**paths["train"], is_train=True, dataset_name=name)
    test = VQADataset(**paths["test"], is_train=False, dataset_name=name) if with_test else None
    return TaskData(name, train, test)


def vqa_query(demonstrations: list[dict], question: str, num_shots: int) -> str:
    """Demonstrations `<image>Question:{q} Short answer:{first answer}<|endofchunk|>\\n`, then
    `<image>Question:{question} Short answer:`."""
    shown = [vqa_prompt(item["question"], item["answers"][0]) for item in demonstrations]
    return with_demonstrations(shown, vqa_prompt(question), num_shots, separator="\n")


def postprocess(name: str):
    if name == "ok_vqa":
        return ok_vqa_utils.postprocess_ok_vqa_generation
    return postprocess_vqa_generation


def evaluate_vqa(data: TaskData, *, args, world, eval_model, num_shots, seed, trial):
    """VQA accuracy in percent on rank 0; None on other ranks, and when the test split has no
    annotations (its predictions are then written for the evaluation server)."""
    process = postprocess(data.name)
    process("")  # OK-VQA: fail now, not after generating, if the stemmer's nltk data are missing
    predictions = []
    for batch in trial_batches(data, args=args, world=world, num_shots=num_shots, seed=seed):
        texts, images = [], []
        for query, demos in zip(batch.queries, batch.demonstrations, strict=True):
            texts.append(vqa_query(demos, query["question"], num_shots))
            shown = [demo["image"] for demo in demos] if num_shots > 0 else []
            images.append([*shown, query["image"]])
        outputs = eval_model.get_outputs(
            texts,
            images,
            max_generation_length=MAX_NEW_TOKENS[data.name],
            num_beams=NUM_BEAMS,
        )
        for query, output in zip(batch.queries, outputs, strict=True):
            prediction = {"answer": process(output), "question_id": query["question_id"]}
            predictions.append((batch.position, {**prediction, "raw": output}))
    predictions = gather_predictions(predictions, world)
    if predictions is None:
        return None
    paths = vqa_paths(args, data.name)["test"]
    if paths["annotations_path"] is None:
        name = f"{data.name}_{num_shots}shot_trial{trial}_seed{seed}.json"
        path = Path(args.predictions_dir or ".") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, [{k: p[k] for k in ("question_id", "answer")} for p in predictions])
        logger.warning("No %s test annotations: predictions saved to %s", data.name, path)
        return None
    with predictions_file(args, data.name, num_shots, seed, trial) as path:
        write_json(path, predictions)
        return compute_vqa_accuracy(
            path, paths["question_path"], paths["annotations_path"], rule=args.vqa_accuracy_rule
        )

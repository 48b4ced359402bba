"""Cache the CLIP image features of every training set for RICES.

    python scripts/cache_rices_features.py --output_dir rices_features --eval_coco \\
        --coco_train_image_dir_path ... --coco_karpathy_json_path ...

writes `<output_dir>/coco.pkl` (a (N, D) float tensor of L2-normalised features in the training
set's order); pass `--rices --cached_demonstration_features <output_dir>` to the evaluation.
Use the same --vision_encoder_path / --vision_encoder_pretrained as the evaluation's
--rices_vision_encoder_path / --rices_vision_encoder_pretrained.
"""

import argparse
import os
from pathlib import Path

import torch

from open_flamingo.eval.args import DATASET_PATH_FLAGS, add_dataset_path_flags
from open_flamingo.eval.rices import RICES_FEATURE_FILES, clip_image_encoder, compute_features
from open_flamingo.eval.tasks import TASKS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--vision_encoder_path", default="ViT-L-14")
    parser.add_argument("--vision_encoder_pretrained", default="openai")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for name in DATASET_PATH_FLAGS:
        parser.add_argument(f"--eval_{name}", action="store_true")
    add_dataset_path_flags(parser)
    args = parser.parse_args(argv)
    if not any(getattr(args, f"eval_{name}") for name in DATASET_PATH_FLAGS):
        parser.error("choose at least one --eval_<dataset>")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    encode = clip_image_encoder(
        args.vision_encoder_path, args.vision_encoder_pretrained, args.device
    )
    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    for key, task in TASKS.items():
        if not getattr(args, f"eval_{key}"):
            continue
        train = task.load(args, task.dataset, with_test=False).train
        features = compute_features(train, encode, args.batch_size, f"RICES {task.dataset}")
        path = Path(args.output_dir) / RICES_FEATURE_FILES[task.dataset]
        torch.save(features, path)
        print(f"{task.title}: {tuple(features.shape)} features -> {path}")
        written.append(path)
    return written

"""Flags of `python -m open_flamingo.eval.evaluate`, with upstream OpenFlamingo's names."""

import argparse
import os

from open_flamingo.cli import exit_with_problems
from open_flamingo.src.pretrained_paths import open_clip_pretrained, resolve_pretrained_path

from .eval_model import PRECISIONS
from .sampling import effective_num_shots

# per-dataset path flags, as upstream names them
DATASET_PATH_FLAGS = {
    "flickr30": {
        "flickr_image_dir_path": "the flickr30k_images folder",
        "flickr_karpathy_json_path": "dataset_flickr30k.json (Karpathy split)",
        "flickr_annotations_json_path": "dataset_flickr30k_coco_style.json (references)",
    },
    "coco": {
        "coco_train_image_dir_path": "the train2014 image folder",
        "coco_val_image_dir_path": "the val2014 image folder",
        "coco_karpathy_json_path": "dataset_coco.json (Karpathy split)",
        "coco_annotations_json_path": "captions_val2014.json (references)",
    },
    **{
        name: {
            f"{name}_{split}_{kind}": f"{label} {split} {text}"
            for split in ("train", "test")
            for kind, text in (
                ("image_dir_path", "image folder"),
                ("questions_json_path", "questions JSON"),
                ("annotations_json_path", "annotations JSON"),
            )
        }
        for name, label in (("vqav2", "VQAv2"), ("ok_vqa", "OK-VQA"), ("vizwiz", "VizWiz"))
    },
    "textvqa": {
        "textvqa_image_dir_path": "the TextVQA image folder (both splits)",
        "textvqa_train_questions_json_path": "TextVQA train questions JSON",
        "textvqa_train_annotations_json_path": "TextVQA train annotations JSON",
        "textvqa_test_questions_json_path": "TextVQA test questions JSON",
        "textvqa_test_annotations_json_path": "TextVQA test annotations JSON",
    },
    "imagenet": {"imagenet_root": "ImageNet root with train/ and val/ class folders"},
    "hateful_memes": {
        "hateful_memes_image_dir_path": "the img/ folder",
        "hateful_memes_train_annotations_json_path": "train.jsonl",
        "hateful_memes_test_annotations_json_path": "dev_seen.jsonl (or another labelled split)",
    },
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m open_flamingo.eval.evaluate",
        description="Few-shot evaluation of OpenFlamingo models, as OpenFlamingo evaluates them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default="open_flamingo", choices=["open_flamingo"], help="model wrapper"
    )
    model.add_argument("--vision_encoder_path", default="ViT-L-14", help="open_clip model name")
    model.add_argument(
        "--vision_encoder_pretrained",
        type=open_clip_pretrained,
        default="openai",
        help="open_clip tag, file, or 'none'",
    )
    model.add_argument("--lm_path", required=True, help="HF id or folder of the language model")
    model.add_argument("--lm_tokenizer_path", default=None, help="default: --lm_path")
    model.add_argument("--checkpoint_path", default=None, help="OpenFlamingo checkpoint.pt")
    model.add_argument(
        "--cross_attn_every_n_layers",
        type=int,
        default=1,
        help="as the checkpoint was trained (released: 3B 1, 4B 2, 9B 4)",
    )
    model.add_argument(
        "--precision", default="fp32", choices=sorted(PRECISIONS), help="weights and autocast"
    )
    model.add_argument(
        "--trust_remote_code", action="store_true", help="allow HF remote code (e.g. MPT-1B)"
    )

    trials = parser.add_argument_group("trials")
    trials.add_argument("--results_file", default=None, help="JSON file for the results")
    trials.add_argument(
        "--predictions_dir", default=None, help="keep every trial's predictions JSON here"
    )
    trials.add_argument(
        "--shots",
        nargs="+",
        type=int,
        default=[0, 4, 8, 16, 32],
        help="demonstrations per query, one evaluation per value",
    )
    trials.add_argument("--num_trials", type=int, default=1, help="trials per shot count")
    trials.add_argument(
        "--trial_seeds", nargs="+", type=int, default=[42], help="one seed per trial"
    )
    trials.add_argument("--num_samples", type=int, default=-1, help="test queries; -1: all")
    trials.add_argument(
        "--query_set_size",
        type=int,
        default=2048,
        help="training items random demonstrations are drawn from",
    )
    trials.add_argument("--batch_size", type=int, default=8, help="queries per batch and process")
    trials.add_argument(
        "--no_caching_for_classification",
        action="store_true",
        help="score each class name over the whole prompt instead of a shared KV cache",
    )
    trials.add_argument(
        "--classification_prompt_ensembling",
        action="store_true",
        help="average class log-likelihoods over up to 6 orders of the demonstrations",
    )
    trials.add_argument(
        "--vqa_accuracy_rule",
        default="upstream",
        choices=["upstream", "official"],
        help="upstream OpenFlamingo's VQA normalisation (default) or the official VQA code's",
    )
    trials.add_argument("--rices", action="store_true", help="demonstrations by CLIP similarity")
    trials.add_argument(
        "--rices_vision_encoder_path", default="ViT-L-14", help="open_clip model for RICES"
    )
    trials.add_argument(
        "--rices_vision_encoder_pretrained", default="openai", help="its pretrained tag"
    )
    trials.add_argument(
        "--cached_demonstration_features",
        default=None,
        help="folder of <dataset>.pkl RICES features (scripts/cache_rices_features.py)",
    )

    datasets = parser.add_argument_group("datasets")
    for name in DATASET_PATH_FLAGS:
        datasets.add_argument(f"--eval_{name}", action="store_true", help=f"evaluate {name}")
    add_dataset_path_flags(parser)

    launch = parser.add_argument_group("distributed (torchrun / accelerate launch)")
    launch.add_argument(
        "--dist-url", dest="dist_url", default="env://", help="process-group init method"
    )
    launch.add_argument("--dist-backend", dest="dist_backend", default=None, help="default: auto")
    launch.add_argument(
        "--no-set-device-rank",
        dest="no_set_device_rank",
        action="store_true",
        help="use cuda:0 in every process (one visible GPU each), not cuda:<local rank>",
    )
    launch.add_argument("--horovod", action="store_true", help=argparse.SUPPRESS)
    return parser


def add_dataset_path_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset paths")
    for flags in DATASET_PATH_FLAGS.values():
        for flag, text in flags.items():
            group.add_argument(f"--{flag}", default=None, help=text)


def dataset_path_problems(args: argparse.Namespace) -> list[str]:
    """Each selected dataset's paths are given and exist: folders for image dirs and roots,
    files for the JSON / JSONL annotations."""
    problems = []
    for name, flags in DATASET_PATH_FLAGS.items():
        if not getattr(args, f"eval_{name}"):
            continue
        for flag, text in flags.items():
            path = getattr(args, flag)
            folder = not flag.endswith("_json_path")
            if path is None:
                problems.append(f"--eval_{name} needs --{flag} ({text})")
            elif folder and not os.path.isdir(path):
                problems.append(f"--{flag} {path}: no such folder ({text})")
            elif not folder and not os.path.isfile(path):
                problems.append(f"--{flag} {path}: no such file ({text})")
    return problems


def flag_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.horovod:
        problems.append("--horovod is not supported: launch with torchrun or accelerate launch")
    if len(args.trial_seeds) != args.num_trials:
        problems.append(
            f"--trial_seeds has {len(args.trial_seeds)} seed(s) for --num_trials {args.num_trials}"
        )
    if args.batch_size < 1:
        problems.append("--batch_size must be at least 1")
    if any(shot < 0 for shot in args.shots):
        problems.append("--shots must be >= 0")
    elif len(set(args.shots)) != len(args.shots):
        problems.append(f"--shots lists a number twice: {' '.join(map(str, args.shots))}")
    if args.cross_attn_every_n_layers < 1:
        problems.append("--cross_attn_every_n_layers must be >= 1")
    if args.query_set_size < 1:
        problems.append("--query_set_size must be >= 1")
    elif args.shots and min(args.shots) >= 0:
        demonstrations = max(map(effective_num_shots, args.shots))
        if not args.rices and demonstrations > args.query_set_size:
            problems.append(
                f"{demonstrations} demonstrations per query need --query_set_size >= "
                f"{demonstrations}"
            )
    if args.cached_demonstration_features and not args.rices:
        problems.append("--cached_demonstration_features only applies with --rices")
    if not any(getattr(args, f"eval_{name}") for name in DATASET_PATH_FLAGS):
        problems.append(
            f"choose at least one of {', '.join('--eval_' + n for n in DATASET_PATH_FLAGS)}"
        )
    return problems


def path_problems(args: argparse.Namespace) -> list[str]:
    """The model's files, the cached RICES features and every selected dataset's paths."""
    problems = []
    for flag in ("lm_path", "lm_tokenizer_path"):
        if getattr(args, flag) is None:
            continue
        try:
            resolve_pretrained_path(getattr(args, flag))
        except FileNotFoundError as error:
            problems.append(f"--{flag}: {error}")
    if args.checkpoint_path and not os.path.isfile(args.checkpoint_path):
        problems.append(f"--checkpoint_path {args.checkpoint_path}: no such file")
    features = args.cached_demonstration_features
    if features and not os.path.isdir(features):
        problems.append(f"--cached_demonstration_features {features}: no such folder")
    return problems + dataset_path_problems(args)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, after every problem with them and with the paths they name has been looked
    for: all of them are reported at once, before anything loads."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = flag_problems(args) + path_problems(args)
    if problems:
        exit_with_problems(parser, problems)
    return args

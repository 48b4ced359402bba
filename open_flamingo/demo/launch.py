"""The command lines the demo runs: training under `accelerate launch`, and the eval CLI it
prints for scoring the result."""

import os
import socket
import sys
from pathlib import Path

from open_flamingo.demo.mixture import write_mixture_spec
from open_flamingo.demo.settings import EVAL_ITEMS, MAX_TOKENS, VISION_ENCODER, Settings
from open_flamingo.tools.paths import ACCELERATE_CONFIGS, TRAIN_SCRIPT


def flag_args(flags: dict) -> list[str]:
    """`--name value` pairs of the trainer's command line."""
    return [arg for name, value in flags.items() for arg in (f"--{name}", str(value))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(
    settings: Settings, lm: Path, vision: Path, corpus: dict, out: Path
) -> tuple[list, dict]:
    """The `accelerate launch` command line of the training run, and its environment."""
    env = dict(os.environ)
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if settings.processes == 1:
        launch += [
            "--config_file",
            str(ACCELERATE_CONFIGS / "accelerate_config_standalone.yaml"),
            "--cpu",
        ]
    else:  # real DDP over gloo on the CPU (docs: --cpu alone would run ONE process)
        env["ACCELERATE_USE_CPU"] = "1"
        launch += [
            "--config_file",
            str(ACCELERATE_CONFIGS / "accelerate_config_ddp.yaml"),
            "--multi_gpu",
            "--main_process_port",
            str(free_port()),
        ]
    launch += [
        "--num_processes",
        str(settings.processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(max(1, (os.cpu_count() or 1) // settings.processes)),
    ]
    s = settings
    flags = {
        "vision_encoder_path": VISION_ENCODER,
        "vision_encoder_pretrained": vision,
        "lm_path": lm,
        "tokenizer_path": lm,
        "cross_attn_every_n_layers": s.cross_attn_every_n_layers,
        "interleaved_dataset": "omnicorpus",
        "omnicorpus_shards": Path(corpus["interleaved_shards"][0]).parent,
        "omnicorpus_image_prefix": corpus["image_prefix"],
        "laion_dataset": "laion",
        "laion_shards": Path(corpus["pair_shards"][0]).parent,
        "batch_size_interleaved": s.batch_interleaved,
        "batch_size_laion": s.batch_laion,
        "max_tokens_interleaved": MAX_TOKENS[s.lm][0],
        "max_tokens_laion": MAX_TOKENS[s.lm][1],
        "mmc4_max_num_images": s.max_images,
        "train_num_samples_interleaved": s.steps * s.batch_interleaved * s.processes,
        "train_num_samples_laion": s.steps * s.batch_laion * s.processes,
        "loss_multiplier_laion": 1.0,
        "workers": s.workers,
        "learning_rate": s.learning_rate,
        "lr_scheduler": "cosine",
        "warmup_steps": s.warmup_steps,
        "precision": "fp32",  # CPU: no bfloat16 matmul units on the development machine
        "num_epochs": 1,
        "seed": s.seed,
        "run_name": "run",
        "external_save_dir": out,
        "logging_steps": s.logging_steps,
        "checkpointing_steps": s.checkpointing_steps,
    }
    if s.mixture:  # the spec names the corpora (demo/mixture.py)
        for flag in ("omnicorpus_shards", "omnicorpus_image_prefix", "laion_shards"):
            del flags[flag]
        flags["mixture"] = write_mixture_spec(out / "mixture.json", s, corpus)
    return [*launch, str(TRAIN_SCRIPT), *flag_args(flags)], env


def eval_command(
    settings: Settings, lm: Path, vision: Path, checkpoint: Path | None, eval_dir: Path
) -> list[str]:
    """`python -m open_flamingo.eval.evaluate` on the held-out split in its Flickr30k layout:
    4-shot captioning CIDEr over 64 queries (without `checkpoint`: the untrained model)."""
    command = [sys.executable, "-m", "open_flamingo.eval.evaluate"]
    command += ["--vision_encoder_path", VISION_ENCODER, "--vision_encoder_pretrained", str(vision)]
    command += ["--lm_path", str(lm), "--lm_tokenizer_path", str(lm)]
    command += ["--cross_attn_every_n_layers", str(settings.cross_attn_every_n_layers)]
    if checkpoint is not None:
        command += ["--checkpoint_path", str(checkpoint)]
    command += ["--precision", "fp32", "--batch_size", "8", "--eval_flickr30"]
    command += ["--flickr_image_dir_path", str(eval_dir / "images")]
    command += ["--flickr_karpathy_json_path", str(eval_dir / "karpathy.json")]
    command += ["--flickr_annotations_json_path", str(eval_dir / "annotations.json")]
    command += ["--shots", "4", "--num_trials", "1", "--trial_seeds", "42"]
    command += ["--num_samples", str(EVAL_ITEMS // 2), "--query_set_size", str(EVAL_ITEMS // 2)]
    return command

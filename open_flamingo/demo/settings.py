"""The demo's two configurations: FULL (`make demo`) and QUICK (`--quick`, the test's mode)."""

from dataclasses import dataclass

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
    # train on a mixture (demo/mixture.py): documents and text-only documents drawn, pairs
    # every step; off in `make demo`, on with `make demo MIXTURE=1`
    mixture: bool = False


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

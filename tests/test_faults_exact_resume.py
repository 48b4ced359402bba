"""Exact resume at the demo's real size: SmolLM2-135M (30 layers, hidden 576, vocabulary 49152,
tied embeddings), which the tiny models of test_train.py do not stand in for. A run resumed from
checkpoint-1 repeats steps 2 and 3 of the uninterrupted run bit for bit: losses and grad norms.

The drift this catches (issue 15) came from counting FLOPs on the first step of each process
with torch's FlopCounterMode, which decomposes silu_backward: open_flamingo/train/flops.py."""

import shutil

import pytest

from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.demo.inputs import convert_smollm2
from open_flamingo.train.metrics import read_metrics
from open_flamingo.train.train_omnicorpus import main
from tiny_models import VISION_ENCODER


@pytest.fixture(scope="module")
def smollm2_run(assets, tmp_path_factory):
    """The flags of a 3-step run on SmolLM2-135M (converted from the asset's GGUF)."""
    root = tmp_path_factory.mktemp("smollm2")
    lm = root / "smollm2-135m"
    convert_smollm2(lm)
    write_synthetic_corpus(
        str(root / "corpus"),
        num_docs=6,
        num_pairs=12,
        num_eval=0,
        docs_per_shard=3,
        pairs_per_shard=6,
        image_size=64,
        seed=0,
    )
    flags = {
        "vision_encoder_path": VISION_ENCODER,
        "vision_encoder_pretrained": "none",
        "lm_path": lm,
        "tokenizer_path": lm,
        "cross_attn_every_n_layers": 10,  # the demo's
        "omnicorpus_shards": root / "corpus" / "interleaved",
        "omnicorpus_image_prefix": root / "corpus" / "images",
        "laion_shards": root / "corpus" / "pairs",
        "batch_size_interleaved": 2,
        "batch_size_laion": 4,
        "max_tokens_interleaved": 48,
        "max_tokens_laion": 12,
        "mmc4_max_num_images": 3,
        "train_num_samples_interleaved": 6,
        "train_num_samples_laion": 12,
        "loss_multiplier_laion": 1.0,
        "learning_rate": 1e-2,
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
        "precision": "fp32",
        "workers": 0,
        "seed": 42,
        "logging_steps": 1,
        "checkpointing_steps": 1,
        "external_save_dir": root,
    }
    return root, flags


def run(flags: dict, **more) -> list[str]:
    return [arg for k, v in {**flags, **more}.items() for arg in (f"--{k}", str(v))]


def test_a_smollm2_run_resumes_bit_exactly(smollm2_run):
    root, flags = smollm2_run
    assert main(run(flags, run_name="uninterrupted")) == 0
    checkpoint = root / "resumed" / "checkpoint-1"  # alone in a new run folder
    shutil.copytree(root / "uninterrupted" / "checkpoint-1", checkpoint)
    assert main(run(flags, run_name="resumed", resume_from_checkpoint=checkpoint)) == 0
    expected = read_metrics(root / "uninterrupted" / "metrics.jsonl")
    got = read_metrics(root / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in expected] == [1, 2, 3] and [r["step"] for r in got] == [2, 3]
    for key in ("loss", "loss_interleaved", "loss_laion", "grad_norm", "lr"):
        assert [r[key] for r in got] == [r[key] for r in expected[1:]], key

"""The training command line becomes a TrainConfig in one place (open_flamingo/train/config.py):
every flag lands in its field, the defaults are the configs' own, and the data-order record a
checkpoint stores keeps its flag-named keys."""

import dataclasses
from pathlib import Path

import pytest

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.mmc4 import MMC4_SIM_THRESHOLD
from open_flamingo.train.args import build_parser, parse_args, parse_config
from open_flamingo.train.config import (
    CheckpointConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from open_flamingo.train.run_folder import data_order


@pytest.fixture
def locations(byte_tokenizer_dir, tmp_path, monkeypatch) -> list[str]:
    """The flags every command line needs: an LM and the two corpora. The corpora's folders
    exist (in the working directory, tmp_path), as the flags' checks want: a shard of each
    suffix the tests' dataset types read, and an image in each image folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("docs/0.jsonl", "m/0.jsonl", "pairs/0.tar", "pairs/0.parquet"):
        Path(name).parent.mkdir(exist_ok=True)
        Path(name).write_bytes(b"")
    for folder in ("images", "mi", "li"):
        Path(folder).mkdir()
        (Path(folder) / "0.jpg").write_bytes(b"")
    return [
        *("--lm_path", str(byte_tokenizer_dir)),
        *("--omnicorpus_shards", "docs", "--omnicorpus_image_prefix", "images"),
        *("--laion_shards", "pairs"),
    ]


def test_defaults_are_the_configs_defaults(locations, byte_tokenizer_dir):
    config = parse_config(locations)
    lm = str(byte_tokenizer_dir)
    assert config.model == ModelConfig(lm_path=lm, tokenizer_path=lm)
    assert config.optim == OptimConfig()
    assert config.checkpoint == CheckpointConfig(run_dir=Path(".") / LoggingConfig.run_name)
    assert dataclasses.replace(config.logging, flags={}) == LoggingConfig()
    assert config.seed == TrainConfig.seed == 42
    assert config.interleaved == CorpusConfig(
        dataset_type="omnicorpus",
        shards="docs",
        image_prefix="images",
        batch_size=8,
        max_tokens=1024,
        num_samples=10000,
        workers=4,
        seed=42,
    )
    assert config.interleaved.sim_threshold == MMC4_SIM_THRESHOLD == 0.24
    assert config.interleaved.max_num_images == 6
    assert config.laion == CorpusConfig(
        dataset_type="laion",
        shards="pairs",
        batch_size=16,
        max_tokens=128,
        num_samples=20000,
        workers=4,
        seed=42,
    )
    assert config.micro_batch_size == 24


def test_every_flag_lands_in_its_field(locations, byte_tokenizer_dir, tmp_path):
    flags = [
        *locations,
        *("--vision_encoder_path", "ViT-B-32", "--vision_encoder_pretrained", "none"),
        *("--tokenizer_path", str(byte_tokenizer_dir), "--cross_attn_every_n_layers", "2"),
        *("--decoder_layers_attr_name", "model.layers", "--trust_remote_code"),
        *("--freeze_lm_embeddings", "--gradient_checkpointing", "selective"),
        *("--interleaved_dataset", "mmc4", "--mmc4_shards", "m", "--mmc4_image_prefix", "mi"),
        *("--laion_dataset", "laion_table", "--laion_image_prefix", "li"),
        *("--batch_size_mmc4", "3", "--batch_size_laion", "5"),
        *("--max_tokens_interleaved", "64", "--max_tokens_laion", "32"),
        *("--train_num_samples_interleaved", "30", "--train_num_samples_laion", "50"),
        *("--loss_multiplier_interleaved", "0.5", "--loss_multiplier_laion", "0.25"),
        *("--mmc4_max_num_images", "4", "--mmc4_textsim_threshold", "0.3"),
        *("--dataset_resampled", "--workers", "1", "--seed", "7"),
        *("--learning_rate", "2e-4", "--lr_scheduler", "cosine", "--warmup_steps", "3"),
        *("--weight_decay", "0.05", "--gradient_accumulation_steps", "2"),
        *("--max_grad_norm", "0.5", "--precision", "amp_bfloat16", "--num_epochs", "3"),
        *("--run_name", "r", "--external_save_dir", str(tmp_path)),
        *("--checkpointing_steps", "9", "--special_checkpointing_steps", "4,8"),
        *("--delete_previous_checkpoint", "--resume_from_checkpoint"),
        *("--logging_steps", "2", "--report_to_wandb", "--wandb_project", "p"),
        *("--wandb_entity", "e", "--offline", "--save_checkpoints_to_wandb"),
        *("--peak_tflops", "100", "--max_nonfinite_steps", "3"),
    ]
    config = parse_config(flags)
    lm = str(byte_tokenizer_dir)
    assert config.model == ModelConfig(
        vision_encoder_path="ViT-B-32",
        vision_encoder_pretrained=None,
        lm_path=lm,
        tokenizer_path=lm,
        cross_attn_every_n_layers=2,
        decoder_layers_attr_name="model.layers",
        trust_remote_code=True,
        freeze_lm_embeddings=True,
        gradient_checkpointing="selective",
    )
    shared = dict(workers=1, seed=7, resampled=True)
    assert config.interleaved == CorpusConfig(
        dataset_type="mmc4",
        shards="m",
        image_prefix="mi",
        batch_size=3,
        max_tokens=64,
        num_samples=30,
        max_num_images=4,
        sim_threshold=0.3,
        **shared,
    )
    assert config.laion == CorpusConfig(
        dataset_type="laion_table",
        shards="pairs",
        image_prefix="li",
        batch_size=5,
        max_tokens=32,
        num_samples=50,
        **shared,
    )
    assert config.optim == OptimConfig(
        learning_rate=2e-4,
        lr_scheduler="cosine",
        warmup_steps=3,
        weight_decay=0.05,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        precision="amp_bf16",
        num_epochs=3,
        loss_multiplier_interleaved=0.5,
        loss_multiplier_laion=0.25,
        max_nonfinite_steps=3,
    )
    assert config.checkpoint == CheckpointConfig(
        run_dir=tmp_path / "r",
        checkpointing_steps=9,
        special_checkpointing_steps=(4, 8),
        delete_previous_checkpoint=True,
        resume_from_checkpoint="latest",
    )
    assert config.logging == LoggingConfig(
        run_name="r",
        logging_steps=2,
        report_to_wandb=True,
        wandb_project="p",
        wandb_entity="e",
        offline=True,
        save_checkpoints_to_wandb=True,
        peak_tflops=100.0,
        flags=vars(parse_args(flags)),
    )
    assert config.seed == 7


def test_data_order_keeps_the_keys_checkpoints_store(locations):
    """trainer_state.json's data_order is compared on resume: its keys are the flags' names, as
    checkpoints written before the configs have them."""
    # 10000 / 8 interleaved and 5000 / 4 pairs: 1250 batches of each
    config = parse_config(
        [*locations, "--workers", "2", "--batch_size_laion", "4", "--seed", "3"]
        + ["--train_num_samples_laion", "5000"]
    )
    assert data_order(config, 2, {}) == {
        "num_processes": 2,
        "workers": 2,
        "batch_size_interleaved": 8,
        "batch_size_laion": 4,
        "gradient_accumulation_steps": 1,
        "seed": 3,
        "dataset_resampled": False,
        "interleaved_dataset": "omnicorpus",
        "laion_dataset": "laion",
        "train_num_samples_interleaved": 10000,
        "train_num_samples_laion": 5000,
    }


def test_every_flag_of_both_clis_says_what_it_does_and_its_default():
    from open_flamingo.eval.args import build_parser as build_eval_parser

    for parser, default in [
        (build_parser(), "peak learning rate (default: 0.0001)"),
        (build_eval_parser(), "(default: [0, 4, 8, 16, 32])"),
    ]:
        flags = [action for action in parser._actions if action.option_strings]
        assert [a.option_strings[0] for a in flags if not a.help] == []
        assert default in " ".join(parser.format_help().split())

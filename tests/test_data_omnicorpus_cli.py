"""OmniCorpus's command line as its users bring it (open_flamingo/train/omnicorpus_flags.py): the
seed's own command with only the data locations added parses, and its loaders start on the
corpora in their published forms; every OmniCorpus flag has its OmniCorpus meaning, or is
refused with the reason; a run with them trains, uploads its checkpoints to wandb and resumes
from a step."""

import dataclasses
import shutil

import pytest
from test_data_published import build_published

from open_flamingo.data.loader import get_data
from open_flamingo.train import checkpointing
from open_flamingo.train.args import parse_args
from open_flamingo.train.config import corpus_configs
from open_flamingo.train.metrics import read_metrics
from open_flamingo.train.train_omnicorpus import main
from tiny_models import VISION_ENCODER

CACHE_FOLDER = "models--anas-awadalla--mpt-1b-redpajama-200b"
# OmniCorpus's README command (mllm_openflamingo), launcher arguments left out.
SEED_COMMAND = f"""
    --lm_path {CACHE_FOLDER} --tokenizer_path {CACHE_FOLDER} --cross_attn_every_n_layers 1
    --dataset_resampled --batch_size_interleaved 8 --batch_size_laion 16
    --max_tokens_interleaved 1024 --max_tokens_laion 128
    --train_num_samples_interleaved 900000000 --train_num_samples_laion 1800000000
    --loss_multiplier_laion 0.2 --learning_rate 1e-4 --workers 4 --precision amp_bf16
    --run_name of-mpt-3b_omnicorpus-laion --num_epochs 1 --warmup_steps 1875
    --checkpointing_steps 5000 --report_to_wandb
""".split()


@pytest.fixture(scope="module")
def published(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("published")
    return root, build_published(root, tokenizer.eos_token)


def data_flags(root, interleaved="omnicorpus_json", images="omnicorpus_images") -> list[str]:
    return [
        "--obelics_data_path",
        f"{root}/{interleaved}",
        "--obelics_image_path",
        f"{root}/{images}",
        "--laionen2b_data_path",
        f"{root}/laionen2b",
        "--laionen2b_image_path",
        f"{root}/laionen2b_images",
    ]


@pytest.fixture
def seed_folder(tmp_path, monkeypatch, tiny_lm_dirs, byte_tokenizer_dir):
    """The current folder of the seed's command: it names its LM by a Hugging Face cache folder
    (here a tiny MPT with the byte tokenizer in its snapshot)."""
    snapshot = tmp_path / CACHE_FOLDER / "snapshots" / "0123abcd"
    shutil.copytree(tiny_lm_dirs["mpt"], snapshot)
    for path in byte_tokenizer_dir.iterdir():
        shutil.copy(path, snapshot / path.name)
    (tmp_path / CACHE_FOLDER / "refs").mkdir()
    (tmp_path / CACHE_FOLDER / "refs" / "main").write_text("0123abcd")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check_batch(batch, layout, root, tokenizer, max_tokens: int) -> None:
    """Every sample of a batch is an expected record of the layout, token for token."""
    for row, key in enumerate(batch["keys"]):
        text, _ = layout.expected[key.removeprefix(f"{root}/")]
        length = int(batch["attention_mask"][row].sum())
        expected = tokenizer(text, max_length=max_tokens, truncation=True)["input_ids"]
        assert batch["input_ids"][row, :length].tolist() == expected


def test_seed_command_with_data_locations_parses_and_its_loaders_start(
    published,
    seed_folder,
    tokenizer,
    image_processor,
):
    root, layouts = published
    args = parse_args(SEED_COMMAND + data_flags(root))
    assert (args.interleaved_dataset, args.laion_dataset) == ("omnicorpus", "laion_table")
    assert args.omnicorpus_shards == f"{root}/omnicorpus_json"
    assert args.omnicorpus_image_prefix == f"{root}/omnicorpus_images"
    assert (args.laion_shards, args.laion_image_prefix) == (
        f"{root}/laionen2b",
        f"{root}/laionen2b_images",
    )
    assert args.report_to_wandb and args.wandb_project is None  # wandb's default project
    interleaved, laion = corpus_configs(args)
    # OmniCorpus's own dataset type names reach the same corpora
    for corpus, name, expected in (
        (interleaved, "omnicorpus", "omnicorpus"),
        (interleaved, "obelics", "obelics"),  # the same schema: OmniCorpus's OBELICS reader
        (laion, "laionen2b", "laion_table"),
    ):
        corpus = dataclasses.replace(corpus, dataset_type=name)
        loader = get_data(corpus, image_processor, tokenizer).dataloader
        assert loader.dataset.config.format.name == expected
        assert loader.dataset.config.shards[0].startswith(f"{root}/")
    for corpus, layout, batch_size, max_tokens in (
        (interleaved, layouts["omnicorpus-json"], 8, 1024),
        (laion, layouts["laionen2b-txt"], 16, 128),
    ):
        loader = get_data(corpus, image_processor, tokenizer).dataloader
        assert len(loader) == 900000000 // 8  # both corpora: the same batches per epoch
        batches = iter(loader)  # 4 workers, as the command asks
        batch = next(batches)
        del batches
        assert batch["input_ids"].shape == (batch_size, max_tokens)
        check_batch(batch, layout, root, tokenizer, max_tokens)


def test_use_clip_sim_reads_the_with_similarities_form(
    published, seed_folder, tokenizer, image_processor
):
    root, layouts = published
    flags = ["--workers", "0", "--use_clip_sim", "--use_iterable_dataset"]
    args = parse_args(SEED_COMMAND + data_flags(root, "omnicorpus_sim", "sim_images") + flags)
    assert args.interleaved_dataset == "omnicorpus_sim"
    interleaved, _ = corpus_configs(args)
    interleaved = dataclasses.replace(interleaved, dataset_type="omnicorpus_w_similarities")
    loader = get_data(interleaved, image_processor, tokenizer).dataloader
    batch = next(iter(loader))
    check_batch(batch, layouts["omnicorpus_sim-jsonl"], root, tokenizer, 1024)


@pytest.mark.parametrize(
    "flags, name, value",
    [
        (["--precision", "amp_bfloat16"], "precision", "amp_bf16"),
        (["--resume_from_checkpoint"], "resume_from_checkpoint", "latest"),
        (
            ["--special_checkpointing_steps", "100", "500"],
            "special_checkpointing_steps",
            [100, 500],
        ),
        (["--use_iterable_dataset"], "use_iterable_dataset", True),
        (["--interleaved_dataset", "obelics"], "interleaved_dataset", "obelics"),  # same schema
        (["--wandb_project", "p"], "wandb_project", "p"),
    ],
)
def test_omnicorpus_flags_have_their_meaning(flags, name, value, published, seed_folder):
    root, _ = published
    args = parse_args(SEED_COMMAND + data_flags(root) + flags)
    assert getattr(args, name) == value


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--omnicorpus_shards", "x"],
            "--obelics_data_path is OmniCorpus's name for --omnicorpus_shards",
        ),
        (["--laion_image_prefix", "x"], "--laionen2b_image_path is OmniCorpus's name for"),
        (
            ["--interleaved_dataset", "mmc4"],
            "--obelics_data_path reads --interleaved_dataset omnicorpus",
        ),
        (["--use_clip_sim", "--interleaved_dataset", "obelics"], "--use_clip_sim reads"),
        (["--laion_dataset", "laion"], "--laionen2b_data_path reads --laion_dataset laion_table"),
        (["--resume_from_steps", "-1"], "--resume_from_steps must be >= 0"),
        (["--resume_from_steps", "3", "--resume_from_checkpoint"], "give one of them"),
        (["--resume_from_steps", "3"], "has no complete checkpoint of step 3 (it has none)"),
        (["--horovod"], "--horovod is not a flag of this trainer"),
        (["--precision", "int8"], "invalid choice: 'int8'"),
    ],
)
def test_omnicorpus_flags_that_cannot_hold_are_refused(
    flags, message, published, seed_folder, capsys
):
    root, _ = published
    with pytest.raises(SystemExit):
        parse_args(SEED_COMMAND + data_flags(root) + flags)
    assert message in capsys.readouterr().err


def test_refused_without_what_they_need(published, seed_folder, capsys):
    root, _ = published
    command = [flag for flag in SEED_COMMAND if flag != "--report_to_wandb"]
    with pytest.raises(SystemExit):
        parse_args(command + data_flags(root) + ["--save_checkpoints_to_wandb"])
    assert "--save_checkpoints_to_wandb needs --report_to_wandb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(SEED_COMMAND + data_flags(root)[:-2])
    assert "give --laionen2b_image_path" in capsys.readouterr().err


def test_a_run_with_omnicorpus_flags_uploads_checkpoints_and_resumes_from_a_step(
    published,
    tiny_lm_dirs,
    byte_tokenizer_dir,
    tmp_path,
):
    root, _ = published
    run = tmp_path / "runs" / "omni"
    flags = data_flags(root) + [
        *("--lm_path", str(tiny_lm_dirs["llama"]), "--tokenizer_path", str(byte_tokenizer_dir)),
        *("--vision_encoder_path", VISION_ENCODER, "--vision_encoder_pretrained", "none"),
        *("--batch_size_interleaved", "2", "--batch_size_laion", "2"),
        *("--max_tokens_interleaved", "256", "--max_tokens_laion", "64"),
        *("--train_num_samples_interleaved", "4", "--train_num_samples_laion", "4"),
        *("--precision", "fp32", "--workers", "0", "--checkpointing_steps", "1"),
        *("--logging_steps", "1"),
        *("--external_save_dir", str(run.parent), "--run_name", run.name),
        *("--report_to_wandb", "--offline", "--save_checkpoints_to_wandb"),
    ]
    assert main(flags) == 0
    assert checkpointing.checkpoint_steps(run) == [1, 2]
    (offline,) = (run / "wandb").glob("offline-run-*")
    for step in (1, 2):
        uploaded = offline / "files" / f"checkpoint-{step}" / "checkpoint.pt"
        assert uploaded.read_bytes() == (run / f"checkpoint-{step}" / "checkpoint.pt").read_bytes()
    first = read_metrics(run / "metrics.jsonl")
    assert main(flags + ["--resume_from_steps", "1"]) == 0  # step 2 again, from step 1's state
    again = read_metrics(run / "metrics.jsonl")
    assert [row["step"] for row in again] == [1, 2]
    assert again[1]["loss"] == pytest.approx(first[1]["loss"], abs=0)

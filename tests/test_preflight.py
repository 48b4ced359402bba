"""Every path and count a command line names is checked before anything loads, and all the
problems are reported at once (issue 18): the training CLI and the eval CLI."""

import json

import pytest
from test_train import argv, tiny  # noqa: F401 (a fixture)

from open_flamingo.eval.evaluate import main as evaluate
from open_flamingo.train import run as train_run
from open_flamingo.train.train_omnicorpus import main as train


@pytest.fixture
def no_model_load(monkeypatch):
    """The model must not be built: a run that gets that far fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the command line was checked")

    monkeypatch.setattr(train_run, "create_model_and_transforms", refuse)


def stderr_of_refusal(call, capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        call()
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_training_reports_every_wrong_path_and_count_at_once(
    tiny,  # noqa: F811
    tmp_path,
    capsys,
    no_model_load,
):
    flags = argv(
        tiny,
        tmp_path / "run",
        lm_path=tmp_path / "no_lm",
        omnicorpus_shards=tmp_path / "no_shards",
        omnicorpus_image_prefix=tmp_path / "no_images",
        laion_shards=tiny["root"] / "corpus" / "pairs",
        train_num_samples_laion=20,
        load_from_pretrained=tmp_path / "no_checkpoint.pt",
    )
    err = stderr_of_refusal(lambda: train(flags), capsys)
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert "5 problems:" in err and len(problems) == 5, err
    assert f"--lm_path: {tmp_path / 'no_lm'}" in problems[1]
    assert "--tokenizer_path" not in err  # given, and it exists
    assert "Set --train_num_samples_laion to 12." in problems[0]
    assert f"--load_from_pretrained {tmp_path / 'no_checkpoint.pt'}: no such file" in problems[2]
    assert problems[3].startswith(f"  - --omnicorpus_shards {tmp_path / 'no_shards'}: ")
    assert problems[4] == (
        f"  - --omnicorpus_image_prefix {tmp_path / 'no_images'}: no such folder, or it holds no "
        "files (its records name images stored there)"
    )
    assert not (tmp_path / "run").exists()


def test_a_corpus_too_small_for_one_batch_is_named(tiny, tmp_path, capsys, no_model_load):  # noqa: F811
    flags = argv(tiny, tmp_path / "run", train_num_samples_interleaved=1)
    err = stderr_of_refusal(lambda: train(flags), capsys)
    assert (
        "--train_num_samples_interleaved 1 is less than one batch (--batch_size_interleaved 2 x "
        "1 processes)" in err
    )


def test_the_launch_world_size_enters_the_counts(
    tiny,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
    no_model_load,
):
    # 12 samples in batches of 2 is 6 batches on one process, 3 on two, 1 on four, 0 on eight
    monkeypatch.setenv("WORLD_SIZE", "8")
    err = stderr_of_refusal(lambda: train(argv(tiny, tmp_path / "run")), capsys)
    assert "--batch_size_interleaved 2 x 8 processes" in err
    assert "--batch_size_laion 2 x 8 processes" in err


def test_flag_and_path_problems_are_reported_together(tiny, tmp_path, capsys, no_model_load):  # noqa: F811
    flags = argv(tiny, tmp_path / "run", batch_size_laion=0, lm_path=tmp_path / "no_lm")
    err = stderr_of_refusal(lambda: train(flags), capsys)
    assert "2 problems:" in err
    assert "--batch_size_laion must be >= 1 (got 0)" in err and "--lm_path: " in err


def eval_argv(tmp_path, **flags) -> list[str]:
    """Eval flags naming an LM folder that exists (its files are not read before the model)."""
    (tmp_path / "lm").mkdir(exist_ok=True)
    (tmp_path / "lm" / "config.json").write_text("{}")
    base = {
        "vision_encoder_path": "ViT-B-32",
        "lm_path": str(tmp_path / "lm"),
        "checkpoint_path": str(tmp_path / "no_checkpoint.pt"),
    }
    base.update(flags)
    out = []
    for key, value in base.items():
        out += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return out


def test_eval_reports_every_missing_dataset_path_at_once(tmp_path, capsys):
    (tmp_path / "train2014").mkdir()
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": []}))
    flags = eval_argv(
        tmp_path,
        eval_coco=True,
        coco_train_image_dir_path=tmp_path / "train2014",
        coco_val_image_dir_path=tmp_path / "val2014",
        coco_karpathy_json_path=karpathy,
        eval_hateful_memes=True,
        hateful_memes_image_dir_path=tmp_path / "img",
        hateful_memes_train_annotations_json_path=tmp_path / "train.jsonl",
    )
    err = stderr_of_refusal(lambda: evaluate(flags), capsys)
    problems = [line[4:] for line in err.splitlines() if line.startswith("  - ")]
    assert problems == [
        f"--checkpoint_path {tmp_path / 'no_checkpoint.pt'}: no such file",
        f"--coco_val_image_dir_path {tmp_path / 'val2014'}: no such folder (the val2014 image "
        "folder)",
        "--eval_coco needs --coco_annotations_json_path (captions_val2014.json (references))",
        f"--hateful_memes_image_dir_path {tmp_path / 'img'}: no such folder (the img/ folder)",
        f"--hateful_memes_train_annotations_json_path {tmp_path / 'train.jsonl'}: no such file "
        "(train.jsonl)",
        "--eval_hateful_memes needs --hateful_memes_test_annotations_json_path (dev_seen.jsonl (or "
        "another labelled split))",
    ]


def test_eval_flag_and_path_problems_are_reported_together(tmp_path, capsys):
    flags = eval_argv(tmp_path, eval_coco=True, batch_size=0, shots=["4", "4"][0])
    flags += ["--shots", "4", "4"]
    err = stderr_of_refusal(lambda: evaluate(flags), capsys)
    assert "--batch_size must be at least 1" in err
    assert "--shots lists a number twice: 4 4" in err
    assert "--eval_coco needs --coco_train_image_dir_path" in err

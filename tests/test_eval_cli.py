"""`python -m open_flamingo.eval.evaluate` end to end: a tiny random model on tiny instances of
every dataset layout, and the numbers checked against the metrics recomputed from the
predictions it wrote."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from eval_cli_fixtures import *  # noqa: F403 (fixtures)
from eval_layouts import COLORS, NUM_TEST, NUM_TRAIN, caption, path_flags
from PIL import Image

from conftest import REPO
from open_flamingo.eval import ok_vqa_utils
from open_flamingo.eval.args import build_parser, parse_args
from open_flamingo.eval.classification import roc_auc
from open_flamingo.eval.coco_metric import compute_cider, postprocess_captioning_generation
from open_flamingo.eval.eval_model import EvalModel
from open_flamingo.eval.evaluate import main
from open_flamingo.eval.vqa_metric import compute_vqa_accuracy, postprocess_vqa_generation

ALL = ["flickr30", "coco", "ok_vqa", "vqav2", "vizwiz", "textvqa", "imagenet", "hateful_memes"]
VQA = ["ok_vqa", "vqav2", "vizwiz", "textvqa"]
DATASET = {"flickr30": "flickr"}  # results key -> prediction-file prefix, where they differ
SEEDS = [0, 1]
TRIAL_FLAGS = [
    "--shots", "0", "2",
    "--num_trials", "2",
    "--trial_seeds", *map(str, SEEDS),
    "--query_set_size", "6",
    "--batch_size", "2",
]  # fmt: skip


def predictions(folder, key, shots, trial):
    name = f"{DATASET.get(key, key)}_{shots}shot_trial{trial}_seed{SEEDS[trial]}.json"
    return folder / name, json.loads((folder / name).read_text())


def test_every_dataset_end_to_end(
    tmp_path, eval_layouts, model_flags, model_calls, offline_ok_vqa_stemmer, capsys
):
    results_file, preds = tmp_path / "results.json", tmp_path / "predictions"
    generative = [key for key in ALL if key != "imagenet"]
    argv = [*model_flags, *TRIAL_FLAGS, *path_flags(eval_layouts, generative)]
    returned = main([*argv, "--results_file", str(results_file), "--predictions_dir", str(preds)])
    assert torch.is_grad_enabled()  # autograd is switched off only inside the evaluation
    results = json.loads(results_file.read_text())
    assert results == returned
    assert list(results) == generative
    table = capsys.readouterr().out
    assert "Hateful Memes  ROC AUC" in table and "VQAv2          VQA accuracy" in table

    # ImageNet scores all 1000 class names per query (the slow one): 2 queries, 1 trial
    argv = [*model_flags, *TRIAL_FLAGS, *path_flags(eval_layouts, ["imagenet"])]
    argv[argv.index("--num_trials") : argv.index("--query_set_size")] = [
        "--num_trials", "1", "--trial_seeds", "0", "--num_samples", "2",
    ]  # fmt: skip
    results.update(main([*argv, "--predictions_dir", str(preds)]))

    for key, entries in results.items():
        assert [e["shots"] for e in entries] == [0, 2]
        for entry, shots in zip(entries, [0, 2], strict=True):
            assert len(entry["trials"]) == (1 if key == "imagenet" else 2)
            assert entry["mean"] == pytest.approx(np.mean(entry["trials"]))
            assert entry["stddev"] == pytest.approx(np.std(entry["trials"]))
            top = {"imagenet": 1, "hateful_memes": 1}.get(key, 100)
            assert all(0 <= s <= top for s in entry["trials"]), (key, entry)
            for trial, score in enumerate(entry["trials"]):
                path, rows = predictions(preds, key, shots, trial)
                assert score == pytest.approx(rescore(key, path, rows, eval_layouts[key]))

    # zero-shot: 2 text-only demonstrations and only the query image; 2-shot: 3 images
    generations = [c for c in model_calls if c[0] == "get_outputs"]
    assert len(generations) == 6 * 2 * 2 * (NUM_TEST // 2)  # datasets x shots x trials x batches
    assert len(model_calls) == len(generations) + 2 * 2 * (NUM_TEST // 2) + 2  # + memes, imagenet
    for _, texts, image_counts in model_calls:
        for text, count in zip(texts, image_counts, strict=True):
            assert text.count("<|endofchunk|>") == 2, text
            assert text.count("<image>") == count
            assert count in (1, 3)
    assert {tuple(c[2]) for c in model_calls} == {(1, 1), (3, 3)}


def rescore(key, path, rows, flags):
    """The trial's score from its predictions file, with the post-processing checked."""
    if key in ("coco", "flickr30"):
        for row in rows:
            assert row["caption"] == postprocess_captioning_generation(row["raw"]).replace('"', "")
        assert len({row["image_id"] for row in rows}) == NUM_TEST
        refs = flags[
            "coco_annotations_json_path" if key == "coco" else "flickr_annotations_json_path"
        ]
        return compute_cider(path, refs)["CIDEr"] * 100
    if key in VQA:
        process = (
            ok_vqa_utils.postprocess_ok_vqa_generation
            if key == "ok_vqa"
            else postprocess_vqa_generation
        )
        for row in rows:
            assert row["answer"] == process(row["raw"])
        assert len(rows) == NUM_TEST
        return compute_vqa_accuracy(
            path,
            flags[f"{key}_test_questions_json_path"],
            flags[f"{key}_test_annotations_json_path"],
        )
    if key == "imagenet":
        assert len(rows) == 2
        return np.mean([row["gt_label"] == row["pred_label"] for row in rows])
    assert len(rows) == NUM_TEST
    p_yes = [r["pred_score"] if r["pred_label"] == "yes" else 1 - r["pred_score"] for r in rows]
    return roc_auc([r["gt_label"] == "yes" for r in rows], p_yes)


def test_scores_of_known_outputs(
    tmp_path, eval_layouts, model_flags, monkeypatch, offline_ok_vqa_stemmer
):
    """Scripted generations and class scores give the hand-computed numbers."""

    def outputs(self, batch_text, batch_images, *args, **kwargs):
        if "Short answer:" in batch_text[0]:  # VQA: cut at ", " and "Question"
            return [" red, it is Question: what"] * len(batch_text)
        # captioning: the query image's colour (the layouts' images are noisy colours)
        return [f'a "{color_of(images[-1])}" square Output: junk' for images in batch_images]

    def class_logprobs(self, batch_text, batch_images, class_names, **kwargs):
        import torch

        if class_names == ["no", "yes"]:  # P(yes) = i / 10 for the meme with text "hi {i}"
            p_yes = torch.tensor(
                [int(t.rsplit("hi ", 1)[1].split("'")[0]) / 10 for t in batch_text]
            )
            return torch.stack([(1 - p_yes).log(), p_yes.log()], dim=1)
        scores = torch.zeros(len(batch_text), len(class_names))
        scores[:, class_names.index("goldfish")] = 1.0
        return scores

    monkeypatch.setattr(EvalModel, "get_outputs", outputs)
    monkeypatch.setattr(EvalModel, "get_rank_classifications", class_logprobs)
    preds = tmp_path / "predictions"
    keys = ["coco", "vqav2", "imagenet", "hateful_memes"]
    results = main(
        [*model_flags, "--shots", "2", "--query_set_size", "6", "--batch_size", "3",
         "--predictions_dir", str(preds), *path_flags(eval_layouts, keys)]
    )  # fmt: skip
    # every VQA answer is "red", which 2 of 10 annotators gave: leave-one-out accuracy
    # (2 x min(1, 1/3) + 8 x min(1, 2/3)) / 10 = 0.6
    assert results["vqav2"][0]["trials"] == [60.0]
    # ImageNet: always "goldfish", right for 2 of the 6 val images
    assert results["imagenet"][0]["trials"] == [pytest.approx(1 / 3)]
    # memes 6..9 (labels 0, 1, 0, 1) with P(yes) 0.6..0.9: 3 of 4 positive/negative pairs ordered
    assert results["hateful_memes"][0]["trials"] == [pytest.approx(0.75)]
    # COCO: captions "a <colour> square " (quotes removed, cut at "Output")
    captions = json.loads((preds / "coco_2shot_trial0_seed42.json").read_text())
    assert {c["image_id"]: c["caption"] for c in captions} == {
        1000 + i: f"{caption(i)} " for i in range(NUM_TRAIN, NUM_TRAIN + NUM_TEST)
    }
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps([{"image_id": 1000 + i, "caption": caption(i)}
                                    for i in range(NUM_TRAIN, NUM_TRAIN + NUM_TEST)]))  # fmt: skip
    cider = compute_cider(expected, eval_layouts["coco"]["coco_annotations_json_path"])["CIDEr"]
    assert cider > 0
    assert results["coco"][0]["trials"] == [pytest.approx(100 * cider)]


def color_of(image) -> str:
    """The name in COLORS nearest to the image's mean colour."""
    mean = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
    rgb = {name: np.array(Image.new("RGB", (1, 1), name).getpixel((0, 0))) for name in COLORS}
    return min(COLORS, key=lambda name: np.abs(rgb[name] - mean).sum())


def run_cli(command, cwd, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env_extra or {}))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.parametrize("keys", [["coco", "vqav2", "hateful_memes"]])
def test_two_processes_equal_one(tmp_path, eval_layouts, model_flags, keys):
    """torchrun with 2 CPU processes (gloo), launching the script file, gives the results and
    predictions of one process launched with `python -m`."""
    flags = [*model_flags, "--shots", "0", "2", "--query_set_size", "6", "--batch_size", "1",
             "--num_samples", "3", *path_flags(eval_layouts, keys)]  # fmt: skip
    single, double = tmp_path / "single", tmp_path / "double"
    run_cli(
        [sys.executable, "-m", "open_flamingo.eval.evaluate", *flags,
         "--results_file", str(single / "results.json"), "--predictions_dir", str(single)],
        cwd=tmp_path,
    )  # fmt: skip
    done = run_cli(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(29500 + os.getpid() % 1000),
         str(REPO / "open_flamingo/eval/evaluate.py"), *flags,
         "--results_file", str(double / "results.json"), "--predictions_dir", str(double)],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.stdout.count("Evaluating on COCO") == 1  # rank 0 reports
    one = json.loads((single / "results.json").read_text())
    two = json.loads((double / "results.json").read_text())
    assert list(one) == keys and one == two
    names = sorted(p.name for p in single.glob("*shot*.json"))
    assert names == sorted(p.name for p in double.glob("*shot*.json")) and len(names) == 6
    for name in names:
        assert (single / name).read_text() == (double / name).read_text()
        rows = json.loads((single / name).read_text())
        assert len(rows) == 3  # --num_samples 3 queries, 2 on one rank, 1 on the other


def test_flag_errors(model_flags, eval_layouts, capsys):
    with pytest.raises(SystemExit):
        main([*model_flags, "--eval_coco", "--num_trials", "2", "--trial_seeds", "1"])
    assert "--trial_seeds has 1 seed(s) for --num_trials 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(model_flags)
    assert "choose at least one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*model_flags, "--eval_coco", "--coco_train_image_dir_path", "."])
    err = capsys.readouterr().err
    assert "3 problems:" in err
    assert "--eval_coco needs --coco_karpathy_json_path (dataset_coco.json (Karpathy split))" in err
    flags = path_flags(eval_layouts, ["coco"])
    with pytest.raises(ValueError, match="--query_set_size 2048 exceeds the 6 training items"):
        main([*model_flags, *flags, "--shots", "2"])


def test_checkpoint_of_another_cross_attention_interval_stops_the_evaluation(
    tmp_path, eval_layouts, model_flags
):
    """The checkpoint has a block before every layer; a model with one every 2nd layer would
    evaluate untrained blocks (CIDEr 0.0, exit 0): the CLI stops before evaluating instead."""
    flags = [*model_flags, *path_flags(eval_layouts, ["coco"]), "--shots", "0"]
    flags[flags.index("--cross_attn_every_n_layers") + 1] = "2"
    done = subprocess.run(
        [sys.executable, "-m", "open_flamingo.eval.evaluate", *flags],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert (
        f"--checkpoint_path {model_flags[model_flags.index('--checkpoint_path') + 1]}"
        in done.stderr
    )
    assert "sit before decoder layers 0, 1, 2, 3 (cross_attn_every_n_layers=1)" in done.stderr
    assert "(cross_attn_every_n_layers=2, 4 decoder layers)" in done.stderr
    assert "--cross_attn_every_n_layers 1" in done.stderr
    assert "Evaluating on" not in done.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shots", "4", "0", "4"], "--shots lists a number twice: 4 0 4"),
        (["--query_set_size", "-3"], "--query_set_size must be >= 1"),
        (["--shots", "8", "--query_set_size", "4"], "8 demonstrations per query need"),
        (["--shots", "0", "--query_set_size", "1"], "2 demonstrations per query need"),
        (["--cross_attn_every_n_layers", "0"], "--cross_attn_every_n_layers must be >= 1"),
        (["--cached_demonstration_features", "f"], "--cached_demonstration_features only applies"),
        (["--checkpoint_path", "/nowhere/x.pt"], "--checkpoint_path /nowhere/x.pt: no such file"),
    ],
)
def test_invalid_flags_are_refused_before_anything_loads(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--lm_path", "lm", "--eval_coco", *flags])
    assert message in capsys.readouterr().err


def test_help_lists_upstream_flags():
    text = build_parser().format_help()
    for flag in [
        "--model", "--vision_encoder_path", "--vision_encoder_pretrained", "--lm_path",
        "--lm_tokenizer_path", "--checkpoint_path", "--cross_attn_every_n_layers", "--precision",
        "--batch_size", "--shots", "--num_trials", "--trial_seeds", "--num_samples",
        "--query_set_size", "--rices", "--cached_demonstration_features", "--results_file",
        *[f"--eval_{k}" for k in ALL], "--coco_karpathy_json_path", "--flickr_image_dir_path",
        "--vqav2_test_questions_json_path",
        "--textvqa_image_dir_path", "--imagenet_root", "--hateful_memes_image_dir_path",
    ]:  # fmt: skip
        assert flag in text, flag

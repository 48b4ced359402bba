"""scripts/demo.py (`make demo`, open_flamingo/demo/) end to end in its `--quick` mode: corpus,
`accelerate launch` training, checkpoint loaded into a fresh model, captions of held-out images,
loss curve."""

import json
import math
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import REPO
from open_flamingo.demo.captions import attributes, split_shots
from open_flamingo.demo.launch import train_command
from open_flamingo.demo.settings import FULL, QUICK, VISION_ENCODER
from open_flamingo.demo.shapes_vision import pretrain_visual

SCRIPT = REPO / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


def test_quick_demo_trains_checkpoints_and_captions(quick_run):
    out, stdout = quick_run
    settings = QUICK
    run = out / "run"

    # every stage ran, in order
    positions = [stdout.index(f"==> [{n}/6]") for n in range(1, 7)]
    assert positions == sorted(positions)
    assert "accelerate.commands.launch" in stdout and "train_omnicorpus.py" in stdout
    # training reads the saved, shapes-pretrained vision encoder (captioning loads the same file)
    vision = out / "vision" / f"{VISION_ENCODER}-shapes{settings.vision_pretrain_steps}-seed0.pt"
    assert vision.is_file() and f"--vision_encoder_pretrained {vision} " in stdout
    assert re.search(r"held-out accuracy: shape \d+%, color \d+%, size \d+%, position \d+%", stdout)

    # metrics.jsonl: one row per logging step, each with a finite loss
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = list(range(settings.logging_steps, settings.steps + 1, settings.logging_steps))
    assert [row["step"] for row in rows] == steps
    for row in rows:
        for key in ("loss", "loss_interleaved", "loss_laion"):
            assert math.isfinite(row[key])

    # checkpoints every `checkpointing_steps` and at the end; "latest" names the last one
    every = settings.checkpointing_steps
    expected = {f"checkpoint-{s}" for s in [*range(every, settings.steps, every), settings.steps]}
    assert {p.name for p in run.glob("checkpoint-*")} == expected
    assert (run / "latest").read_text().strip() == f"checkpoint-{settings.steps}"
    loaded = re.search(r"loaded (\d+) trained tensors from (\S+)", stdout)
    assert int(loaded[1]) > 0
    assert loaded[2] == str(run / f"checkpoint-{settings.steps}" / "checkpoint.pt")

    # the table: a header, then one row per held-out query image with its true caption
    items = json.loads((out / "corpus" / "eval" / "captions.json").read_text())
    shots, queries = split_shots(items, settings.num_captions)
    assert len(queries) == settings.num_captions
    assert not [item for item in queries if item in shots]
    prompt = "".join(f"<image>{shot['caption']}<|endofchunk|>" for shot in shots) + "<image>"
    assert f"prompt: {prompt!r}" in stdout
    lines = stdout.splitlines()
    header = next(
        i
        for i, line in enumerate(lines)
        if line.split()[:4] == ["#", "truth", "generated", "right"]
    )
    table = lines[header + 2 : header + 2 + settings.num_captions]
    for number, (line, item) in enumerate(zip(table, queries, strict=True), 1):
        assert line.split()[0] == str(number)
        assert item["caption"] in line
    assert lines[header + 3 + settings.num_captions].startswith("right: color ")

    # the summary and the loss curve
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert f"loss at step {steps[0]}: {first:.3f}, at step {steps[-1]}: {last:.3f}" in stdout
    assert "total wall time:" in stdout
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_pretraining_teaches_the_vision_tower_the_shapes():
    """The demo's stand-in for CLIP pretraining: linear heads on the patch tokens name held-out
    drawings' attributes at chance before, and colour, size and position almost always after 150
    steps (measured: 97-99%; shape, the slowest, 66%)."""
    import open_clip
    import torch

    import open_flamingo.src.factory  # noqa: F401  (registers ViT-Tiny-16)

    torch.manual_seed(0)
    clip, _, preprocess = open_clip.create_model_and_transforms("ViT-Tiny-16", pretrained=None)
    before = pretrain_visual(clip.visual, preprocess, steps=0, seed=0)
    after = pretrain_visual(clip.visual, preprocess, steps=150, seed=0)
    chance = {"shape": 1 / 5, "color": 1 / 6, "size": 1 / 2, "position": 1 / 5}
    for name, rate in chance.items():
        assert before[name] < rate + 0.1, (name, before)
        assert after[name] > before[name], (name, before, after)
    assert min(after["color"], after["size"], after["position"]) >= 0.9, after
    assert after["shape"] >= 0.4, after


def test_attributes_read_from_captions():
    assert attributes("a large red circle in the top left") == {
        "color": "red",
        "shape": "circle",
        "size": "large",
        "position": "top left",
    }
    assert attributes("This is a small blue star in the center.") == {
        "color": "blue",
        "shape": "star",
        "size": "small",
        "position": "center",
    }
    # two colours, or none: not credited
    said = attributes("a red and blue squares in the bottom")
    assert said == {"color": None, "shape": None, "size": None, "position": None}


def test_two_process_training_is_real_ddp_on_cpu(tmp_path):
    """With 2 processes the launch is DDP over gloo (ACCELERATE_USE_CPU=1 + --multi_gpu); `--cpu
    --num_processes 2` would silently run one process."""
    settings = replace(FULL, processes=2)
    corpus = {
        "interleaved_shards": [str(tmp_path / "interleaved" / "shard-00000.jsonl")],
        "pair_shards": [str(tmp_path / "pairs" / "shard-00000.tar")],
        "image_prefix": str(tmp_path / "images"),
    }
    vision = tmp_path / "vision.pt"
    command, env = train_command(settings, tmp_path / "lm", vision, corpus, tmp_path)
    assert env["ACCELERATE_USE_CPU"] == "1"
    assert "--multi_gpu" in command and "--cpu" not in command
    assert command[command.index("--num_processes") + 1] == "2"
    flags = dict(zip(command, command[1:], strict=False))  # flag -> the word after it
    per_run = settings.steps * settings.processes
    assert flags["--train_num_samples_interleaved"] == str(per_run * settings.batch_interleaved)
    assert flags["--train_num_samples_laion"] == str(per_run * settings.batch_laion)
    assert flags["--vision_encoder_pretrained"] == str(vision)
    # as upstream, the <image> and <|endofchunk|> embedding rows train
    assert "--freeze_lm_embeddings" not in command


def test_quick_mixture_demo_trains_on_documents_text_and_pairs(tmp_path):
    """`make demo MIXTURE=1` in the quick mode: a `--mixture` spec over the synthetic documents,
    text-only documents and pairs; per-source losses in metrics.jsonl and the loss curve."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--mixture", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    spec = json.loads((out / "mixture.json").read_text())
    assert f"--mixture {out / 'mixture.json'}" in result.stdout
    assert [s["type"] for s in spec["sources"]] == ["omnicorpus", "text", "laion"]
    assert spec["steps"] == QUICK.steps
    assert list((out / "corpus" / "text").glob("*.jsonl"))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 6]
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["loss_shapes-pairs"])
        assert row["samples/shapes-pairs"] == 2 * QUICK.batch_laion
    drawn = sum(row["samples/shapes-docs"] + row["samples/shapes-text"] for row in rows)
    assert drawn == QUICK.steps * QUICK.batch_interleaved
    assert (out / "run" / "loss.png").is_file()

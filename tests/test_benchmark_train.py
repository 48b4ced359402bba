"""scripts/benchmark_train.py (open_flamingo/benchmarks/train_step.py): upstream's OF-3B shapes,
honest FLOP counts, the trainer's step.

Speed itself is measured on the GPU (docs/benchmarks.md), never here.
"""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from open_flamingo.benchmarks import train_step
from open_flamingo.benchmarks.common import synthetic_batch
from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.tools.paths import GPT_NEOX_TOKENIZER

pytestmark = pytest.mark.usefixtures("assets")  # the GPT-NeoX tokenizer

TINY = [
    "--lm", "tiny-mpt", "--vision_encoder_path", "ViT-Tiny-16",
    "--batch_size_laion", "2", "--max_tokens_laion", "16",
    "--batch_size_interleaved", "2", "--max_tokens_interleaved", "48", "--images_per_doc", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def neox():
    return load_flamingo_tokenizer(str(GPT_NEOX_TOKENIZER))


def test_of3b_model_and_step_are_upstreams(neox):
    """The parameter counts and the FLOPs per step that ../shared/notes/performance.md records
    for upstream 2.0.1 at OF-3B shapes (1,046,992,944 of 2,559,019,056; 127.2 TFLOP)."""
    args = train_step.parse_args([])
    model = train_step.build_model(args, neox, torch.device("meta"))
    assert sum(p.numel() for p in model.parameters()) == 2_559_019_056
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_046_992_944
    flops = train_step.count_flops(args, neox, train_step.step_batches(args, neox))
    assert flops / 1e12 == pytest.approx(127.2, abs=0.05)


def test_fake_tensor_flops_equal_a_real_eager_step(neox):
    args = train_step.parse_args(TINY)
    laion, interleaved = train_step.step_batches(args, neox)
    counted = train_step.count_flops(args, neox, (laion, interleaved))
    model = train_step.build_model(args, neox, torch.device("cpu"))
    # FlopCounterMode has no formula for the CPU flash-attention kernel; the math backend
    # spells attention out in matmuls, as the CUDA kernels' formulas count it.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as real:
        losses = [
            model(b["images"], b["input_ids"], b["attention_mask"], b["labels"]).loss * m
            for b, m in ((laion, 0.2), (interleaved, 1.0))
        ]
        sum(losses).backward()
    assert counted == real.get_total_flops() > 0


def test_synthetic_batch_is_a_training_batch(neox):
    batch = synthetic_batch(neox, 2, 60, 3, 32, seed=0)
    media, eoc = 50278, 50277  # GPT-NeoX-20B + OpenFlamingo's tokens
    ids = batch["input_ids"]
    assert ids.shape == (2, 60) and batch["images"].shape == (2, 3, 1, 3, 32, 32)
    assert (ids == media).sum(dim=1).tolist() == [3, 3]
    assert (ids == eoc).sum(dim=1).tolist() == [3, 3]
    assert ids.max() <= media and batch["attention_mask"].all()
    assert torch.equal(batch["labels"] == -100, ids == media)


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_benchmark_runs_the_training_step_and_reports_one_json_line(precision, capsys, neox):
    result = train_step.main([*TINY, "--precision", precision, "--steps", "3", "--warmup", "1"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(printed) == result
    times = result["step_time_s"]
    assert times["min"] <= times["median"] <= times["max"]
    assert result["samples_per_s"] == pytest.approx(4 / times["median"])
    assert result["tokens_per_s"] == pytest.approx((2 * 16 + 2 * 48) / times["median"])
    assert result["achieved_tflops"] == pytest.approx(
        result["flops_per_step"] / times["median"] / 1e12
    )
    assert result["mfu"] is None and result["peak_memory_gib"] is None  # no GPU here
    # four real AdamW steps (lr 1e-4) on one batch: the loss goes down every step
    losses = result["losses"]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:], strict=False))


def test_profile_writes_one_more_steps_top_operators(tmp_path, capsys, neox):
    path = tmp_path / "profiles" / "train.txt"
    result = train_step.main([*TINY, "--steps", "2", "--warmup", "0", "--profile", str(path)])
    assert result["profile"] == str(path)
    assert len(result["losses"]) == 2  # the profiled step is not one of the timed ones
    table = path.read_text()
    assert "Self CPU" in table.splitlines()[1]  # torch.profiler's table, sorted by CPU time here
    assert "aten::mm" in table or "aten::addmm" in table or "aten::bmm" in table


def test_bad_benchmark_flags_are_explained(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_step.parse_args(["--tokenizer_path", str(tmp_path / "missing")])
    assert "fetch_test_assets.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_step.parse_args(["--max_tokens_interleaved", "8", "--images_per_doc", "6"])
    assert "room for the <image> chunks" in capsys.readouterr().err
    for flags, message in [
        (["--images_per_doc", "0"], "--images_per_doc must be >= 1"),
        (["--batch_size_laion", "0"], "--batch_size_laion must be >= 1"),
        (["--max_tokens_laion", "1"], "room for the <image> chunks"),
        (["--cross_attn_every_n_layers", "3"], "between 1 and 2 (the layers of --lm tiny-mpt)"),
        (["--peak_tflops", "-1"], "--peak_tflops must be a positive number"),
    ]:
        with pytest.raises(SystemExit):
            train_step.parse_args([*TINY, *flags])
        assert message in capsys.readouterr().err, flags


def test_compiled_step_trains_as_the_eager_step(capsys):
    """--compile (torch.compile of each cross-attention + decoder layer) on the CPU's inductor:
    the same losses as eager over five steps, the two batch shapes included."""
    runs = {
        compiled: train_step.main(
            [*TINY, "--precision", "fp32", "--steps", "2", "--warmup", "3", *flag]
        )
        for compiled, flag in ((False, []), (True, ["--compile"]))
    }
    assert runs[True]["compile"] and not runs[False]["compile"]
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], rel=1e-5)

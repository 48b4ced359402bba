"""scripts/benchmark_generate.py (open_flamingo/benchmarks/generation.py): upstream's few-shot
captioning workload, reported per setting.

Speed itself is measured on the GPU (docs/benchmarks.md), never here.
"""

import json

import pytest

from open_flamingo.benchmarks import generation
from open_flamingo.benchmarks.common import few_shot_prompt
from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.tools.paths import GPT_NEOX_TOKENIZER

pytestmark = pytest.mark.usefixtures("assets")  # the GPT-NeoX tokenizer


def test_the_prompt_is_upstreams_4_shot_captioning_prompt():
    tokenizer = load_flamingo_tokenizer(str(GPT_NEOX_TOKENIZER))
    ids = few_shot_prompt(tokenizer, 4)
    assert ids.numel() == 79  # ../shared/notes/performance.md
    assert ids.tolist().count(tokenizer.convert_tokens_to_ids("<image>")) == 5
    assert ids.tolist().count(tokenizer.convert_tokens_to_ids("<|endofchunk|>")) == 4
    text = tokenizer.decode(ids)
    assert text.startswith("<image>Output:A man") and text.endswith("<image>Output:")


def test_benchmark_generates_exactly_the_new_tokens_and_reports_queries_per_s(capsys):
    results = generation.main(
        [
            "--lm", "tiny-mpt", "--vision_encoder_path", "ViT-Tiny-16", "--batch_size", "2",
            "--new_tokens", "5", "--num_beams", "3", "1", "--batches", "2", "--warmup", "1",
        ]
    )  # fmt: skip
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == results
    assert [r["num_beams"] for r in results] == [3, 1]
    for result in results:
        assert result["new_tokens"] == 5
        assert result["images_per_query"] == 5 and result["prompt_tokens"] == 79
        times = result["batch_time_s"]
        assert times["min"] <= times["median"] <= times["max"]
        assert result["queries_per_s"] == pytest.approx(2 / times["median"])


def test_static_cache_and_compiled_decoding_generate_the_same_ids(monkeypatch, capsys):
    from open_flamingo.src import decoding

    compiled_with = []

    def compile_for_decoding(lang_encoder):
        compiled_with.append(lang_encoder)
        # CPU inductor takes minutes to compile; aot_eager traces the same graphs, no codegen
        decoding.compile_for_decoding(lang_encoder, backend="aot_eager", mode=None)

    monkeypatch.setattr(generation, "compile_for_decoding", compile_for_decoding)
    common = [
        "--lm", "tiny-mpt", "--vision_encoder_path", "ViT-Tiny-16", "--batch_size", "2",
        "--new_tokens", "4", "--num_beams", "3", "--batches", "1", "--warmup", "1",
    ]  # fmt: skip
    dynamic, static, compiled = (
        generation.main(common + flags)[0] for flags in ([], ["--static_cache"], ["--compile"])
    )
    assert len(compiled_with) == 1
    assert (dynamic["kv_cache"], static["kv_cache"], compiled["kv_cache"]) == (
        "dynamic", "static", "static"
    )  # fmt: skip
    assert (static["compiled"], compiled["compiled"]) == (False, True)
    assert dynamic["output_digest"] == static["output_digest"] == compiled["output_digest"]


def test_profile_writes_one_more_batchs_top_operators_per_setting(tmp_path, capsys):
    results = generation.main(
        [
            "--lm", "tiny-mpt", "--vision_encoder_path", "ViT-Tiny-16", "--batch_size", "1",
            "--new_tokens", "2", "--num_beams", "2", "1", "--batches", "1", "--warmup", "0",
            "--profile", str(tmp_path / "generate.txt"),
        ]
    )  # fmt: skip
    for result, name in zip(results, ("generate_beam2.txt", "generate_beam1.txt"), strict=True):
        assert result["profile"] == str(tmp_path / name)
        assert "aten::" in (tmp_path / name).read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch_size", "0"], "--batch_size and --num_beams must be >= 1"),
        (["--num_beams", "3", "0"], "--batch_size and --num_beams must be >= 1"),
        (["--cross_attn_every_n_layers", "3"], "between 1 and 2 (the layers of --lm tiny-mpt)"),
        (["--tokenizer_path", "/nowhere"], "no tokenizer at /nowhere"),
    ],
)
def test_bad_flags_are_explained(capsys, flags, message):
    with pytest.raises(SystemExit):
        generation.parse_args(["--lm", "tiny-mpt", *flags])
    assert message in capsys.readouterr().err


def test_compare_eager_reports_the_logit_gap_and_first_differing_token(capsys):
    """--compare_eager (greedy) against eager decoding with the dynamic cache: on the CPU the
    static cache decodes eager's tokens, its logits within bfloat16 rounding of eager's."""
    (result,) = generation.main(
        [
            "--lm", "tiny-mpt", "--vision_encoder_path", "ViT-Tiny-16", "--batch_size", "2",
            "--new_tokens", "4", "--num_beams", "1", "--batches", "1", "--warmup", "0",
            "--static_cache", "--compare_eager",
        ]
    )  # fmt: skip
    report = result["against_eager"]
    assert report["first_differing_step"] is None
    assert len(report["max_logit_diff_per_step"]) == 4
    assert all(0 <= diff < 0.05 for diff in report["max_logit_diff_per_step"])

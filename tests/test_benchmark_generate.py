"""scripts/benchmark_generate.py: upstream's few-shot captioning workload, reported per setting.

Speed itself is measured on the GPU (docs/benchmarks.md), never here.
"""

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def bench(assets):
    return load_script("benchmark_generate")


def test_the_prompt_is_upstreams_4_shot_captioning_prompt(bench):
    tokenizer = bench.load_flamingo_tokenizer(str(bench.GPT_NEOX_TOKENIZER))
    ids = bench.few_shot_prompt(tokenizer, 4)
    assert ids.numel() == 79  # ../shared/notes/performance.md
    assert ids.tolist().count(tokenizer.convert_tokens_to_ids("<image>")) == 5
    assert ids.tolist().count(tokenizer.convert_tokens_to_ids("<|endofchunk|>")) == 4
    text = tokenizer.decode(ids)
    assert text.startswith("<image>Output:A man") and text.endswith("<image>Output:")


def test_benchmark_generates_exactly_the_new_tokens_and_reports_queries_per_s(bench, capsys):
    results = bench.main(
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


def test_static_cache_and_compiled_decoding_generate_the_same_ids(bench, monkeypatch, capsys):
    from open_flamingo.src import decoding

    compiled_with = []

    def compile_for_decoding(lang_encoder):
        compiled_with.append(lang_encoder)
        # CPU inductor takes minutes to compile; aot_eager traces the same graphs, no codegen
        decoding.compile_for_decoding(lang_encoder, backend="aot_eager", mode=None)

    monkeypatch.setattr(bench, "compile_for_decoding", compile_for_decoding)
    common = [
        "--lm", "tiny-mpt", "--vision_encoder_path", "ViT-Tiny-16", "--batch_size", "2",
        "--new_tokens", "4", "--num_beams", "3", "--batches", "1", "--warmup", "1",
    ]  # fmt: skip
    dynamic, static, compiled = (
        bench.main(common + flags)[0] for flags in ([], ["--static_cache"], ["--compile"])
    )
    assert len(compiled_with) == 1
    assert (dynamic["kv_cache"], static["kv_cache"], compiled["kv_cache"]) == (
        "dynamic", "static", "static"
    )  # fmt: skip
    assert (static["compiled"], compiled["compiled"]) == (False, True)
    assert dynamic["output_digest"] == static["output_digest"] == compiled["output_digest"]


def test_profile_writes_one_more_batchs_top_operators_per_setting(bench, tmp_path, capsys):
    results = bench.main(
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
def test_bad_flags_are_explained(bench, capsys, flags, message):
    with pytest.raises(SystemExit):
        bench.parse_args(["--lm", "tiny-mpt", *flags])
    assert message in capsys.readouterr().err

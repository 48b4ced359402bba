"""Training on a mixture (`--mixture`): per-source logging, running out of a source, exact
resume after SIGKILL, a source on the real Ceph RGW, and the flags a mixture replaces. On the CPU
with the tiny model and synthetic corpus of test_train.py."""

import json

import pytest
from test_data_formats import upload_dirs
from test_faults_runs import start_trainer, wait_for_step
from test_train import argv, losses, tiny  # noqa: F401 (a fixture)

from open_flamingo.data.synthetic import write_synthetic_corpus
from open_flamingo.train import checkpointing
from open_flamingo.train.args import parse_args
from open_flamingo.train.config import LoggingConfig
from open_flamingo.train.metrics import MetricsLogger, read_metrics
from open_flamingo.train.train_omnicorpus import main

STEPS = 8
NO_CORPUS_FLAGS = dict(omnicorpus_shards=None, omnicorpus_image_prefix=None, laion_shards=None)


def sources(corpus, text) -> list[dict]:
    return [
        {"name": "omnicorpus", "type": "omnicorpus", "shards": f"{corpus}/interleaved",
         "image_prefix": f"{corpus}/images", "weight": 2, "batch_size": 2, "max_tokens": 96},
        {"name": "obelics", "type": "obelics", "shards": f"{corpus}/interleaved",
         "image_prefix": f"{corpus}/images", "weight": 1, "batch_size": 1, "max_tokens": 64,
         "loss_multiplier": 0.5},
        # 2 samples per epoch: 1 batch, so it runs out and starts its next epoch at each draw
        {"name": "web", "type": "text", "shards": text, "weight": 3, "batch_size": 2,
         "max_tokens": 48, "num_samples": 2},
        {"name": "laion", "type": "laion", "shards": f"{corpus}/pairs", "batch_size": 2,
         "max_tokens": 32, "loss_multiplier": 0.2},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def mixture(tiny):  # noqa: F811
    root = tiny["root"]
    text = write_synthetic_corpus(
        str(root / "text-corpus"), num_docs=0, num_pairs=0, num_eval=0, num_texts=12,
        texts_per_shard=4,
    )["text_shards"]  # fmt: skip
    spec = {"steps": STEPS, "sources": sources("corpus", "text-corpus/text")}
    path = root / "mixture.yaml"
    path.write_text(json.dumps(spec))  # relative paths: from the spec's folder
    assert len(text) == 3
    return path


def mixture_argv(tiny, run, spec, **flags):  # noqa: F811
    return argv(tiny, run, mixture=spec, **NO_CORPUS_FLAGS, **flags)


@pytest.fixture(scope="module")
def uninterrupted(tiny, mixture):  # noqa: F811
    run = tiny["root"] / "mixture-uninterrupted"
    assert main(mixture_argv(tiny, run, mixture, workers=1)) == 0
    return run


def test_each_step_logs_its_sources_and_a_source_that_runs_out_starts_its_next_epoch(
    uninterrupted,
):
    rows = read_metrics(uninterrupted / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    drawn_names = ("omnicorpus", "obelics", "web")
    batch = {"omnicorpus": 2, "obelics": 1, "web": 2, "laion": 2}
    for row in rows:
        drawn = [name for name in drawn_names if row[f"loss_{name}"] is not None]
        assert len(drawn) == 1  # exactly one drawn source per micro-step
        (name,) = drawn
        assert row["loss_laion"] is not None  # the pair source every step
        # the step's loss is the multiplier-weighted sum of its two batches' losses
        multiplier = {"omnicorpus": 1.0, "obelics": 0.5, "web": 1.0}[name]  # as in the spec
        expected = row[f"loss_{name}"] * multiplier + row["loss_laion"] * 0.2
        assert row["loss"] == pytest.approx(expected, rel=1e-6)
        for source, size in batch.items():
            taken = source == name or source == "laion"
            assert row[f"samples/{source}"] == (size if taken else 0)
    web_steps = sum(row["loss_web"] is not None for row in rows)
    assert web_steps >= 2, "the seed draws web at least twice, so it runs out of its epoch"
    # 1 batch per web epoch: each draw after the first starts its next epoch
    assert rows[-1]["epoch/web"] == web_steps - 1
    assert rows[-1]["epoch/laion"] == 0  # 8 steps of 8 per epoch (steps x batch default)
    # the draw and every source's loader position are in the checkpoint
    last = uninterrupted / f"checkpoint-{STEPS}"
    saved = json.loads((last / "loaders_rank0.json").read_text())
    assert set(saved) == {"omnicorpus", "obelics", "web", "laion", "_draw"}
    draws = saved["_draw"]["counts"]
    assert draws == {n: sum(row[f"loss_{n}"] is not None for row in rows) for n in drawn_names}
    assert saved["web"]["epoch"] == rows[-1]["epoch/web"]
    # per-source skips, as the two-corpus run logs them: the texts are longer than 48 tokens
    truncated = sum(state["skips"]["text_truncated"] for state in saved["web"]["states"].values())
    assert rows[-1]["trimmed/web/text_truncated"] == truncated >= 2


def test_a_mixture_run_killed_with_sigkill_resumes_exactly(tiny, mixture, uninterrupted):  # noqa: F811
    run = tiny["root"] / "mixture-killed"
    process = start_trainer(tiny, run, mixture=mixture, **NO_CORPUS_FLAGS, workers=1)
    wait_for_step(process, run, 5)  # checkpoint-4 is complete; step 5 is lost with the kill
    process.kill()
    process.wait()
    assert checkpointing.resolve_resume("latest", run) == run / "checkpoint-4"
    assert main(mixture_argv(tiny, run, mixture, workers=1, resume_from_checkpoint="latest")) == 0
    expected = read_metrics(uninterrupted / "metrics.jsonl")
    got = read_metrics(run / "metrics.jsonl")
    keys = [k for k in expected[0] if k.startswith(("loss", "samples/", "epoch/"))]
    for key in [*keys, "grad_norm", "lr"]:
        assert [r[key] for r in got] == [r[key] for r in expected], key


def test_a_mixture_with_a_source_on_ceph_rgw_trains_as_the_local_one(
    tiny,  # noqa: F811
    mixture,
    uninterrupted,
    s3_bucket,
):
    root = tiny["root"]
    upload_dirs(root, f"{s3_bucket}/data", ("text-corpus",))
    spec = json.loads(mixture.read_text())
    spec["sources"][2]["shards"] = f"{s3_bucket}/data/text-corpus/text"
    remote = root / "mixture-s3.yaml"
    remote.write_text(json.dumps(spec))
    run = root / "mixture-s3"
    assert main(mixture_argv(tiny, run, remote, workers=1)) == 0
    assert losses(run) == losses(uninterrupted)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"omnicorpus_shards": "x"}, "--omnicorpus_shards would be ignored"),
        ({"workers": 0}, None),
    ],
)
def test_corpus_flags_beside_a_mixture_are_refused(tiny, mixture, tmp_path, capsys, flags, message):  # noqa: F811
    args = [*mixture_argv(tiny, tmp_path / "run", mixture), *argv_extra(flags)]
    if message is None:
        assert parse_args(args).mixture == str(mixture)
        return
    with pytest.raises(SystemExit):
        parse_args(args)
    assert message in capsys.readouterr().err


def argv_extra(flags: dict) -> list[str]:
    return [arg for key, value in flags.items() for arg in (f"--{key}", str(value))]


def test_a_bad_spec_stops_the_run_before_the_model_loads(tiny, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"steps": 2, "sources": [{"name": "x", "type": "text"}]}))
    with pytest.raises(SystemExit):
        main(mixture_argv(tiny, tmp_path / "run", bad))
    assert f"--mixture {bad}: source 'x': missing field(s)" in capsys.readouterr().err


def test_a_mixture_s_counts_are_checked_before_the_model_loads(tiny, mixture, tmp_path, capsys):  # noqa: F811
    """A source without one batch in its epoch, and accumulation past the run's micro-steps,
    are reported together, as the two-corpus run's counts are (preflight.py)."""
    flags = mixture_argv(tiny, tmp_path / "run", mixture, num_epochs=1)
    flags += ["--gradient_accumulation_steps", str(STEPS + 1)]
    with pytest.raises(SystemExit):
        main(flags)
    err = capsys.readouterr().err
    assert (
        f"--gradient_accumulation_steps {STEPS + 1} exceeds the {STEPS} micro-steps of the run: "
        "no optimizer step would be taken. Lower it, or raise --num_epochs / the mixture's steps."
    ) in err
    one_sample = json.loads(mixture.read_text())
    one_sample["sources"][2]["num_samples"] = 1  # web: batches of 2
    small = mixture.parent / "mixture-small.yaml"
    small.write_text(json.dumps(one_sample))
    with pytest.raises(SystemExit):
        main(mixture_argv(tiny, tmp_path / "run", small))
    assert (
        f"{small}: source web: num_samples 1 is less than one batch (batch_size 2 x 1 processes)"
    ) in capsys.readouterr().err


class RecordingAccelerator:
    """What MetricsLogger uses of accelerate: the trackers' calls, recorded."""

    is_main_process, num_processes, process_index = True, 1, 0

    def __init__(self):
        self.logged = []

    def init_trackers(self, project, config, init_kwargs):
        pass

    def log(self, values, step):
        self.logged.append((step, values))


def test_wandb_gets_the_per_source_keys_of_the_metrics_rows(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    accelerator = RecordingAccelerator()
    logger = MetricsLogger(tmp_path, accelerator, LoggingConfig(report_to_wandb=True))
    rows = read_metrics(uninterrupted / "metrics.jsonl")
    for row in rows:
        logger.log(row)
    assert read_metrics(tmp_path / "metrics.jsonl") == rows
    for (step, values), row in zip(accelerator.logged, rows, strict=True):
        assert step == row["step"]
        assert values == {k: v for k, v in row.items() if v is not None}  # same keys and numbers
        assert {"samples/web", "epoch/web", "loss_laion"} <= set(values)

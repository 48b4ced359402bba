"""What a person reads of a training run (issue 18): the start-up line, a metrics row for the
last step whatever --logging_steps is, the end-of-run summary, trimmed inputs not called
skipped, no INFO flood from other libraries, and no empty run folder after a failed run."""

import os
import subprocess
import sys

import pytest
from test_train import REPO, argv, tiny  # noqa: F401 (a fixture)

from open_flamingo.train.metrics import read_metrics
from open_flamingo.train.train_omnicorpus import main


def test_a_run_logs_its_last_step_and_ends_with_a_summary(tiny, tmp_path):  # noqa: F811
    run = tmp_path / "short"
    # 12 samples in batches of 2: 6 steps, fewer than --logging_steps; texts cut at 40 tokens
    flags = argv(tiny, run, logging_steps=100, checkpointing_steps=100, max_tokens_interleaved=40)
    code = f"import sys; from open_flamingo.train.train_omnicorpus import main; sys.exit(main({flags!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert "plain PyTorch on 1 process (cpu)" in log
    rows = read_metrics(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [6]
    assert rows[0]["trimmed/interleaved/text_truncated"] > 0
    assert not any(key.startswith("skipped/") and "truncated" in key for key in rows[0])
    assert "run complete: steps 1-6 of 6" in log
    assert f"last loss {rows[0]['loss']:.4f}" in log
    assert "(24 samples" in log  # 6 steps of 2 documents and 2 pairs
    assert "inputs trimmed: interleaved/text_truncated" in log
    assert f"checkpoints in {run} (latest checkpoint-6); metrics in {run / 'metrics.jsonl'}" in log
    assert "trimmed (text_truncated" in log and "skipped (text_truncated" not in log
    # open_clip announces each model it builds at INFO ("Loaded ... model config."); not here
    assert "model config" not in log and "INFO root" not in log


def test_a_failed_run_leaves_no_empty_run_folder(tiny, tmp_path):  # noqa: F811
    weights = tmp_path / "random.pt"
    weights.write_bytes(os.urandom(256))
    run = tmp_path / "failed"
    with pytest.raises(SystemExit):
        main(argv(tiny, run, load_from_pretrained=weights))
    assert not run.exists()


def test_a_failed_run_keeps_a_folder_it_did_not_create(tiny, tmp_path):  # noqa: F811
    weights = tmp_path / "random.pt"
    weights.write_bytes(os.urandom(256))
    run = tmp_path / "mine"
    run.mkdir()
    with pytest.raises(SystemExit):
        main(argv(tiny, run, load_from_pretrained=weights))
    assert run.is_dir()

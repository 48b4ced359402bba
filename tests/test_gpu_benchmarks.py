"""scripts/gpu_benchmarks.sh's SMOKE path on the CPU: every step of the prepared GPU run,
upstream's side-by-side benchmark included, at tiny shapes, so that the one device call of a lent
GPU cannot rot between sessions (docs/benchmarks.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, require

UPSTREAM_SITE = REPO / ".cache" / "upstream-site"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, assets):
    require(
        (UPSTREAM_SITE / "open_flamingo").is_dir(), "upstream site missing: run `make upstream`"
    )
    out = tmp_path_factory.mktemp("gpu_benchmarks")
    env = dict(
        os.environ,
        SMOKE="1",
        OUT=str(out),
        BUDGET_S="1500",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        OMP_NUM_THREADS="2",
    )
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", "scripts/gpu_benchmarks.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1600,
    )
    log = (out / "log.txt").read_text()
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return out, log, results


def test_every_step_ran_to_the_end_within_its_limit(smoke):
    _, log, _ = smoke
    assert "!! exit" not in log and "skipped, budget spent" not in log
    steps = [line for line in log.splitlines() if line.startswith("== ")]
    took = [line for line in log.splitlines() if line.startswith("-- took ")]
    assert len(steps) == len(took) == 9
    assert "benchmark_upstream.py" in steps[1]  # right after ours: the headline comparison
    assert log.rstrip().splitlines()[-1].startswith("done after ")


def test_upstream_ran_on_its_own_stack_with_our_inputs(smoke):
    _, _, results = smoke
    ours = [r for r in results if r.get("implementation") == "ours"]
    upstream = [r for r in results if r.get("implementation") == "upstream"]
    assert upstream[0]["stack"].startswith("open-flamingo 2.0.1, transformers 4.46.3")
    (upstream_train,) = [r for r in upstream if r["figure"] == "train_step"]
    eager_train = next(r for r in ours if "step_time_s" in r)
    assert upstream_train["inputs_digest"] == eager_train["inputs_digest"]
    # the same model: upstream's counts and ours agree to the parameter
    assert upstream_train["parameters"] == eager_train["parameters"]
    assert upstream_train["trainable_parameters"] == eager_train["trainable_parameters"]
    upstream_generate = [r for r in upstream if r["figure"] == "generate"]
    our_generate = [r for r in ours if "queries_per_s" in r and not r["compiled"]]
    assert [r["num_beams"] for r in upstream_generate] == [r["num_beams"] for r in our_generate]
    assert [r["num_beams"] for r in upstream_generate] == [3, 1]
    for theirs, mine in zip(upstream_generate, our_generate, strict=True):
        assert theirs["inputs_digest"] == mine["inputs_digest"]
        assert theirs["new_tokens"] == mine["new_tokens"] == 3


def test_every_configuration_reported_its_figures(smoke):
    out, _, results = smoke
    trains = [r for r in results if r.get("implementation") == "ours" and "step_time_s" in r]
    configurations = [(r["lm"], r["compile"], r["gradient_checkpointing"]) for r in trains]
    assert configurations == [
        ("tiny-mpt", False, None),
        ("tiny-mpt", False, "selective"),
        ("tiny-mpt", True, None),
        ("tiny-llama", False, None),
    ]
    compiled = [r for r in results if r.get("compiled")]
    assert [r["num_beams"] for r in compiled] == [3, 1]
    assert {r["kv_cache"] for r in compiled} == {"static"}
    runs = {r["run"]: r for r in results if "run" in r}
    # FSDP needs GPUs; the smoke run leaves zero1-slurm to tests/test_slurm.py
    assert set(runs) == {"zero1", "zero1-killed"}
    assert all(r["status"] == 0 for r in runs.values())
    assert set(runs["zero1-killed"]["resumed_vs_uninterrupted"].values()) == {0.0}
    for profile in ("train_profile", "upstream_train_profile", "generate_compiled_beam3"):
        assert "Self CPU time total" in (out / f"{profile}.txt").read_text()

"""Fixtures for the evaluation-metric tests: offline WordNet for nltk, and upstream
open-flamingo 2.0.1's metric modules run as the reference (tests/upstream/eval_metrics_oracle.py).
"""

import json
import os
import subprocess
import sys

import nltk
import pytest

from conftest import REPO, require

NLTK_DATA = REPO / ".cache" / "nltk_data"
UPSTREAM_EVAL = REPO / ".cache" / "upstream-site" / "open_flamingo" / "eval"
ORACLE = REPO / "tests" / "upstream" / "eval_metrics_oracle.py"


@pytest.fixture(scope="session")
def nltk_data():
    """The offline WordNet copy (`make nltk-data`), on nltk's search path for the session."""
    require(
        (NLTK_DATA / "corpora" / "wordnet" / "lexnames").is_file(),
        "offline WordNet missing: apt-get install wordnet-base wordnet-sense-index "
        "(scripts/ci/install_services.sh), then `make nltk-data`",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NLTK_DATA", str(NLTK_DATA))
        patch.setattr(nltk.data, "path", [str(NLTK_DATA), *nltk.data.path])
        yield NLTK_DATA


@pytest.fixture(scope="session")
def run_upstream(nltk_data, tmp_path_factory):
    """run_upstream(job: dict) -> upstream's outputs (see eval_metrics_oracle.py)."""
    require(UPSTREAM_EVAL.is_dir(), "upstream reference missing: run `make upstream`")
    workdir = tmp_path_factory.mktemp("upstream_eval")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(UPSTREAM_EVAL), str(REPO / "tests")]),
        NLTK_DATA=str(nltk_data),
    )

    def run(job: dict) -> dict:
        job_path, out_path = workdir / "job.json", workdir / "out.json"
        job_path.write_text(json.dumps(job))
        done = subprocess.run(
            [sys.executable, str(ORACLE), str(job_path), str(out_path)],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"upstream oracle failed:\n{done.stderr[-4000:]}"
        return json.loads(out_path.read_text())

    return run

"""Shared fixtures: tiny offline models, the real assets from `make assets`, CI strictness."""

import importlib.util
import os
from pathlib import Path

import open_clip
import pytest
import torch

from open_flamingo.src.factory import load_flamingo_tokenizer
from open_flamingo.tools.byte_tokenizer import save_byte_tokenizer
from tiny_models import FAMILIES, VISION_ENCODER, build_flamingo, save_tiny_lm

pytest_plugins = ["ceph_fixtures", "slurm_fixtures", "eval_fixtures"]
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / ".cache" / "assets"
IN_CI = os.environ.get("CI", "").lower() == "true"
# CI and the development machine have no GPU; scripts/gpu_benchmarks.sh runs these tests on the
# lent GPU machine.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_module(path: Path, name: str | None = None):
    """The Python file at `path` as a module: one of upstream's files, whose package has our
    package's import name."""
    spec = importlib.util.spec_from_file_location(name or Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require(condition: bool, reason: str) -> None:
    """Skip when a local prerequisite is missing; in CI (CI=true) that is a failure instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def assets() -> Path:
    require((ASSETS / "COMPLETE").exists(), "offline assets missing: run `make assets`")
    return ASSETS


@pytest.fixture(scope="session")
def byte_tokenizer_dir(tmp_path_factory) -> Path:
    return save_byte_tokenizer(tmp_path_factory.mktemp("byte_tokenizer"))


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_lms")
    return {family: save_tiny_lm(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def tokenizer(byte_tokenizer_dir):
    """The byte-level test tokenizer with OpenFlamingo's special tokens added."""
    return load_flamingo_tokenizer(str(byte_tokenizer_dir))


@pytest.fixture(scope="module")
def image_processor():
    """The tiny vision encoder's preprocessing (64 px)."""
    return open_clip.create_model_and_transforms(VISION_ENCODER, pretrained=None)[2]


@pytest.fixture
def make_flamingo(tiny_lm_dirs, byte_tokenizer_dir):
    """make_flamingo(family, **kwargs) -> (model, image_processor, tokenizer)."""

    def make(family: str = "mpt", seed: int = 0, **kwargs):
        return build_flamingo(tiny_lm_dirs[family], byte_tokenizer_dir, seed=seed, **kwargs)

    return make


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield

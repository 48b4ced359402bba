"""Paths of the repository checkout that the demo, the benchmarks and the tools default to.

They run from a checkout (an editable install, or PYTHONPATH at the repository root), as the
entry points under scripts/ do: `make assets` writes the offline assets to .cache/assets, and
the accelerate configs live at the top of the repository.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parent
ASSETS = REPO / ".cache" / "assets"
GPT_NEOX_TOKENIZER = ASSETS / "tokenizers" / "gpt-neox-20b"
SMOLLM2_GGUF = ASSETS / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ACCELERATE_CONFIGS = REPO / "accelerate_configs"
TRAIN_SCRIPT = PACKAGE / "train" / "train_omnicorpus.py"

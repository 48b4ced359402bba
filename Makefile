# The README's two commands: `make demo` and `make test`. Both create and use .venv/ at the
# repo root; nothing else needs to be installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The CPU/CUDA pair that this machine's pip takes from local disk (see docs/development.md).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
ASSETS := .cache/assets
# upstream open-flamingo 2.0.1 on transformers 4.46.3, importable beside our venv's torch; the
# equivalence tests run it as the reference (tests/test_upstream_equivalence.py); webdataset is
# what its train/data.py imports (tests/test_data_mmc4_order.py).
UPSTREAM_SITE := .cache/upstream-site
UPSTREAM_PKGS := open-flamingo==2.0.1 transformers==4.46.3 tokenizers==0.20.3 \
	huggingface_hub==0.36.0 open_clip_torch==2.32.0 einops-exts==0.0.4 webdataset==0.2.100

.PHONY: test demo lint format assets upstream nltk-data clean

$(INSTALLED): setup.py requirements.txt requirements-training.txt requirements-eval.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_PIN)
	$(PY) -m pip install -e '.[all]' -r requirements-test.txt
	touch $@

$(ASSETS)/COMPLETE: scripts/fetch_test_assets.py | $(INSTALLED)
	$(PY) scripts/fetch_test_assets.py --out $(ASSETS)

$(UPSTREAM_SITE)/.installed: | $(INSTALLED)
	rm -rf $(UPSTREAM_SITE)
	$(PY) -m pip install --no-deps --target $(UPSTREAM_SITE) $(UPSTREAM_PKGS)
	touch $@

assets: $(ASSETS)/COMPLETE
upstream: $(UPSTREAM_SITE)/.installed

# Offline WordNet for nltk (the OK-VQA stemmer), copied from Debian's wordnet-base.
NLTK_DATA_DIR := .cache/nltk_data
nltk-data: | $(INSTALLED)
	$(PY) scripts/setup_nltk_data.py --out $(NLTK_DATA_DIR) --allow-missing

test: $(INSTALLED) assets upstream nltk-data
	$(PY) -m pytest tests

# Train a small Flamingo (tiny ViT + the real SmolLM2-135M-Instruct) on the synthetic shapes
# corpus on the CPU, then caption held-out images: scripts/demo.py. Output under runs/demo/.
# `make demo MIXTURE=1` trains on a mixture with text-only data instead (docs/training.md).
demo: $(INSTALLED) assets
	$(PY) scripts/demo.py $(if $(filter 1,$(MIXTURE)),--mixture)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .cache .pytest_cache

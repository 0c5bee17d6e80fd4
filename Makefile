# medmvl: every target installs what it needs first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast lint train clean chromium bench docs

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# everything (CI): tests/unit, tests/integration (subprocess runs, training, distributed, browser), tests/demo
test: install chromium
	$(BIN)/python -m pytest -q

# the development loop: unit tests without the multi-second ones (marked slow; make test runs them)
test-fast: install
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

# Debian chromium for the demo page's headless screenshot test (tests/integration/test_gradio_app.py); as root
# only: without it that one test is skipped and says so
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		chromium; } || echo "make chromium: could not install Debian chromium; the screenshot test will skip"

lint: install
	$(BIN)/ruff check src tests train.py infer.py evaluate.py demo.py export.py
	$(BIN)/ruff format --check src tests train.py infer.py evaluate.py demo.py export.py

train: install
	$(BIN)/python train.py experiment=demo $(ARGS)

# benchmarks (not part of make test): medmvl vs transformers' Llava, layouts, memory, generation, 3D loader;
# writes experiments/bench/results/*.json and results.md. ARGS="--threads 1" on a shared machine
bench: install
	$(BIN)/python experiments/bench/run.py $(ARGS)

# the documentation site (mkdocs.yml, docs/): fails on broken links, pages missing from the nav and
# docstrings mkdocstrings cannot render; writes site/ (SITE=<folder> elsewhere)
SITE ?= site
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d $(SITE)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache

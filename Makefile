# Two commands for a newcomer: `make demo` (set up what running needs, then train + evaluate digits, then
# TensorBoard until Ctrl-C) and `make test` (the same set-up plus the dev tools, then the system tools, lint
# and the whole test suite: what CI runs).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# Where torch comes from (scripts/torch-index, which the Dockerfile uses too): `auto` takes PyPI's CUDA
# build where nvidia-smi sees a GPU and PyTorch's CPU wheel index elsewhere; a URL, or empty for pip's own
# index (`make test TORCH_INDEX=`), overrides.
TORCH_INDEX ?= auto
TORCH_INDEX_URL := $(shell TORCH_INDEX='$(TORCH_INDEX)' scripts/torch-index)
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist), a test module each at a time: most tests wait on real processes, so two
# keep both cores busy. In collection order, so the tests marked `long` start first (tests/conftest.py).
# `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2
DEMO_DIR ?= runs/demo
PORT ?= 6006
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test lint chaos clean

# What running needs (torch, then the project's dependencies), and on top of it the dev extras (pytest, ruff,
# playwright, MLflow...) that only `make test` needs.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH)"
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

# train.py, eval.py and TensorBoard as three processes (launch.py, as `docker compose up` runs them) until
# every checkpoint is evaluated; then the best checkpoint's table, then TensorBoard until Ctrl-C (not under
# CI=true, so CI's `make demo` finishes by itself).
PORT_TAKEN = TensorBoard could not serve on port $(PORT) (in use?): make demo PORT=N, or \
	$(VENV)/bin/tensorboard --logdir $(DEMO_DIR) --port 0
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(PY) launch.py --config configs/digits.yaml --train-dir $(DEMO_DIR) --port $(PORT) --exit-when-done
	@echo
	@echo "Evaluated $$(wc -l < $(DEMO_DIR)/eval/results.jsonl) checkpoints; the best one:"
	@$(PY) eval.py --train-dir $(DEMO_DIR) --checkpoint best
	@echo
	@if [ -n "$$CI" ]; then \
		echo "CI=$$CI: not serving TensorBoard; to look at the curves: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)"; \
	else \
		echo "TensorBoard serves the curves until Ctrl-C: open http://localhost:$(PORT)/#custom_scalars"; \
		echo "(the Custom Scalars tab: train and eval loss on one chart, accuracy beside it)"; \
		$(VENV)/bin/tensorboard --logdir $(DEMO_DIR) --port $(PORT) 2>/dev/null || echo "$(PORT_TAKEN)"; \
	fi

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	scripts/system-tools
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# The chaos test by hand, longer: rounds of tests/test_chaos.py (three evaluators and a trainer SIGKILLed and
# SIGSTOPped at random, then the invariants on disk) for MINUTES minutes, each round with its own seed
# (CHAOS_SEED=N starts at N: a failing round's seed replays its schedule); its figures in a table at the end.
MINUTES ?= 10
chaos: $(VENV)/.installed-dev
	CHAOS_MINUTES=$(MINUTES) $(PY) -m pytest tests/test_chaos.py -q -s --timeout 0

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache .ruff_cache

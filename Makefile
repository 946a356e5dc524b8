# Two commands for a newcomer: `make demo` (set up, then train + evaluate digits beside TensorBoard)
# and `make test` (set up, then lint and run the whole test suite).

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel keeps set-up small; on a GPU machine use e.g. `make demo TORCH=torch` for a CUDA build.
TORCH ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PORT ?= 6006
PY := $(VENV)/bin/python

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	@# train.py, eval.py and TensorBoard as three processes, as `docker compose up` runs them. When training
	@# and evaluation are done TensorBoard keeps serving on http://localhost:$(PORT): Ctrl-C stops everything.
	$(PY) launch.py --config configs/digits.yaml --train-dir $(DEMO_DIR) --port $(PORT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache .ruff_cache

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
	@# train.py, eval.py and TensorBoard as three processes, as `docker compose up` runs them; TensorBoard
	@# serves on http://localhost:$(PORT) while they run, and all three stop once evaluation is done.
	$(PY) launch.py --config configs/digits.yaml --train-dir $(DEMO_DIR) --port $(PORT) --exit-when-done
	@echo
	@echo "Evaluated $$(wc -l < $(DEMO_DIR)/eval/results.jsonl) checkpoints; the best one:"
	@$(PY) eval.py --train-dir $(DEMO_DIR) --checkpoint best
	@echo
	@echo "Look at the curves: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR), then open http://localhost:$(PORT)"
	@echo "(or run '$(PY) launch.py --train-dir $(DEMO_DIR)', which keeps TensorBoard serving until Ctrl-C)."
	@echo "Start on the 'Custom Scalars' tab: train and eval loss on one chart, accuracy beside it."

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache .ruff_cache

# Two commands for a newcomer: `make demo` (set up, then train + evaluate digits as two processes)
# and `make test` (set up, then lint and run the whole test suite).

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel keeps set-up small; on a GPU machine use e.g. `make demo TORCH=torch` for a CUDA build.
TORCH ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PY := $(VENV)/bin/python

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@# eval.py first: it waits for train.py's config.yaml, then evaluates each checkpoint as it lands.
	$(PY) eval.py --train-dir $(DEMO_DIR) --idle-timeout 600 & eval_pid=$$!; \
	trap 'kill $$eval_pid 2>/dev/null' INT TERM; \
	$(PY) train.py --config configs/digits.yaml --train-dir $(DEMO_DIR) || { kill $$eval_pid; exit 1; }; \
	wait $$eval_pid
	@echo
	@echo "Evaluated $$(wc -l < $(DEMO_DIR)/eval/results.jsonl) checkpoints; the best one:"
	@$(PY) eval.py --train-dir $(DEMO_DIR) --checkpoint best
	@echo
	@echo "Now look at the curves:  $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)  and open http://localhost:6006"
	@echo "Scalars: 'loss' shows the train and eval runs on one chart; 'accuracy' and 'f1_macro' the eval run."

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

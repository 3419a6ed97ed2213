# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TQDM_DISABLE_WARNINGS := 1

.PHONY: install demo test bench clean

install: $(STAMP)

# torch first, pinned to the CPU wheel on local disk; the project's range then installs nothing more
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m alignflow.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# every benchmark then one summary table (bench/suite.py); TRL is the bench extra, a baseline for SFT and DPO
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/suite.py

clean:
	rm -rf .alignflow outputs demo_out bench_out .pytest_cache

PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test quickstart clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# The CPU build of torch first: with it in place nothing pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 --durations=15 tests

# Clean, tokenize, pretrain, instruction-tune, align, prompt, evaluate every stage:
# runs/quickstart/report.md (about 15 minutes on 2 CPU cores). ARGS adds gin bindings, e.g.
# make quickstart ARGS="--gin.quickstart.reasoning_problems=50". Ctrl-C, then again: resumes at
# that stage; other settings in the same MODEL_DIR are refused, naming what changed.
quickstart: install
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m jaxlm.main --gin_file=gin_configs/runs/quickstart.gin $(ARGS)

clean:
	rm -rf $(VENV)

# Two entry points for a fresh machine: `make demo` (a short real search) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# This project's machines hold the real data beside the checkout; elsewhere the objectives
# download it into ~/.cache/search on first use.
ifneq ($(wildcard ../shared/data),)
export SEARCH_DATA_DIR ?= $(abspath ../shared/data)
endif
DEMO := recipe-mpr-demo

.PHONY: install demo test

install: $(VENV)/.installed

# torch first, pinned: pip would otherwise pull the newest CUDA build as a dependency.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,minilm]'
	touch $@

demo: install
	$(BIN)/search worker --study recipe-mpr --name $(DEMO) --set model_name_or_path=minilm \
	    --set num_train_epochs=2 --n-trials 3
	$(BIN)/search status --study $(DEMO)
	$(BIN)/search export --study $(DEMO) -o best.yaml
	@echo; cat best.yaml

test: install
	$(BIN)/python -m pytest -q --junitxml=test-reports/junit.xml $(PYTEST_ARGS)

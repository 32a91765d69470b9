# The two commands a newcomer runs: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=
# axe-core, the accessibility engine the browser tests inject into the search page:
# installed from the npm registry at a pinned version into a git-ignored folder.
AXE_VERSION := 4.14.1
NPM_DIR     := .cache/npm
AXE         := $(NPM_DIR)/node_modules/axe-core/axe.min.js
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -c constraints.txt -e '.[dev,cluster]'
	touch $@

$(AXE): Makefile
	npm install --no-save --no-audit --no-fund --prefix $(NPM_DIR) axe-core@$(AXE_VERSION)
	grep -q 'axe v$(AXE_VERSION)' $@
	touch $@

install: $(STAMP) $(AXE)

demo: $(STAMP)
	$(VENV)/bin/deeplens demo $(ARGS)

test: $(STAMP) $(AXE)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) data $(NPM_DIR)

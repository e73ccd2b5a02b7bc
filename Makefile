# stellar_spectra: `make run` (the pipeline) and `make test` (everything CI checks) work from a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.lab-installed
export PATH := $(BIN):$(PATH)
export PYTHONWARNINGS := ignore::UserWarning:nbdev.doclinks
NBWORKERS ?= 2

.PHONY: install run scale test check-clean lint nbtest pytest docs lab readme chromium clean

# (Re)install only when the package definition or the pinned versions change.
$(STAMP): setup.py settings.ini constraints.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	{ $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' torch==2.13.0 2>&1; } | { grep -v 'is ignored: it is neither a file' || true; }
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	dvc repro
	@echo; echo "Pipeline outputs (dvc.yaml; parameters in params.yaml):"
	stellar-spectra summary

# The seed's scale end to end (params.yaml `scale:`; made for a GPU machine): `make scale SCALE_ARGS='--preset cpu'` on a CPU.
scale: $(STAMP)
	stellar-spectra scale --params params.yaml $(SCALE_ARGS)

# Fails when a notebook is not clean or the package is out of sync with the notebooks.
check-clean: $(STAMP)
	nbdev_clean
	git diff --exit-code --stat -- nbs/ || { echo "Notebooks are not clean: run nbdev_clean and commit."; exit 1; }
	nbdev_export
	git diff --exit-code --stat -- stellar_spectra/ || { echo "stellar_spectra/ is out of sync with nbs/: run nbdev_export and commit."; exit 1; }
	untracked=$$(git ls-files --others --exclude-standard -- nbs/ stellar_spectra/); \
	  if [ -n "$$untracked" ]; then echo "Untracked notebooks or modules: $$untracked"; exit 1; fi

# Lines of at most 120 characters, one statement per line, no unused imports or undefined names (.ruff.toml); `ruff format` keeps the layout.
lint: $(STAMP)
	ruff check nbs tests bench docs setup.py
	ruff format --check nbs tests bench docs setup.py

nbtest: $(STAMP)
	nbdev_test --n_workers $(NBWORKERS)

chromium:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

pytest: $(STAMP) chromium
	python -m pytest tests/ -q -p no:cacheprovider

# pytest runs last so that its summary line is the last line of output.
test: $(STAMP)
	$(MAKE) --no-print-directory check-clean
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest

# The site (docs/site/index.html) and the methodology PDF (docs/site/methodology.pdf: every page, in site order, checked page by page).
docs: $(STAMP) chromium
	python docs/build.py

readme: $(STAMP)
	python docs/build.py --readme

# JupyterLab (pinned in constraints.txt) and the kernel: installed once, again only when the environment or the pins change.
$(LAB_STAMP): $(STAMP) constraints.txt
	{ python -m pip install -q -c constraints.txt jupyterlab 2>&1; } | { grep -v 'is ignored: it is neither a file' || true; }
	python -m ipykernel install --sys-prefix --name stellar_spectra --display-name "stellar_spectra"
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	jupyter lab nbs/

clean:
	rm -rf docs/site docs/_proc_site papermill_runs/*.ipynb

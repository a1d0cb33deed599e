# RetNet, derived: build the book and run its tests. `make help` lists the targets.
#   make book   create .venv if needed, install what the book needs, build the site into _build/html
#   make test   unit tests, the release files checked, nbval on every notebook, nbval again on the notebooks
#               with run results in two other numeric environments, site build, real-browser test (in that order)

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# The Python that creates .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed first, only when the venv has no torch. On the project's machines this exact pin is a local
# CPU wheel; elsewhere pass your own, e.g. make book TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
# Seconds per notebook cell under nbval.
NBVAL_CELL_TIMEOUT ?= 600
# What `make nbval` and `make regen` run, e.g. NOTEBOOKS=book/intro.ipynb.
NOTEBOOKS ?= book/
PORT ?= 8000
# The notebooks with results of a run (cells tagged run-result): `make portable` re-checks them elsewhere.
RUN_RESULT_NOTEBOOKS ?= $(shell grep -l '"run-result"' book/*.ipynb)
# A stand-in for "another CPU": scalar ATen kernels instead of AVX2/AVX-512, MKL's compatible code path.
PERTURBED_ENV := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE
ONE_THREAD_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
JB_FLAGS := -W -n --keep-going
# Strict nbval (every stored output compared; see tests/nbval_sanitize.cfg for the one thing masked).
NBVAL = $(PY) -m pytest --nbval --nbval-current-env --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) \
	--nbval-sanitize-with tests/nbval_sanitize.cfg -q -p no:cacheprovider
REPORTS := _build/reports
TIMED := bash scripts/timed

.PHONY: help book test unit package nbval portable site site-fresh browser browser-setup regen install-cells serve \
	screenshot clean env colab

help:
	@echo "make book        create .venv if needed, install the toolchain, build the site (_build/html)"
	@echo "make test        unit -> package -> nbval -> portable -> site -> browser, each timed (_build/reports/stages.txt)"
	@echo "make unit        package tests and notebook guards (pytest tests/)"
	@echo "make package     build the wheel and sdist (_build/dist), install the wheel in a fresh venv, import every module"
	@echo "make nbval       re-run every notebook and compare with its stored outputs (strict nbval)"
	@echo "make portable    nbval on the notebooks with run results, as on another CPU and with 1 thread"
	@echo "make site        build the site from the stored outputs (warnings are errors)"
	@echo "make site-fresh  build the site re-executing every notebook (a failing cell fails the build)"
	@echo "make browser     headless Chromium over every page of the built site, offline"
	@echo "make regen       regenerate stored notebook outputs (NOTEBOOKS=book/x.ipynb for one)"
	@echo "make install-cells  rewrite only the notebooks' install cells and README links from _config.yml (no execution)"
	@echo "make colab       rehearse Colab offline: install cell, ipywidgets 7.7.1, every notebook (COLAB_FLAGS=--working-tree)"
	@echo "make serve       serve _build/html on http://127.0.0.1:$(PORT)"
	@echo "make screenshot  refresh docs/screenshot.png from the browser test's screenshot"

# ------------------------------------------------------------------ environment
# Creates .venv when missing; installs torch first when the venv has none; then requirements.txt,
# unless scripts/check_env.py finds everything already there (no network, no reinstall).
env:
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" \
		|| { echo "installing $(TORCH_SPEC)"; $(PY) -m pip install -q $(TORCH_SPEC); }
	@$(PY) scripts/check_env.py >/dev/null || { echo "installing requirements.txt"; \
		$(PY) -m pip install -q -r requirements.txt; }

# ------------------------------------------------------------------ the two commands of the README
book: env
	@$(MAKE) --no-print-directory site
	@echo "Open _build/html/index.html in a browser, or run: make serve"

test: env
	@rm -f $(REPORTS)/stages.txt
	@$(TIMED) unit $(MAKE) --no-print-directory unit
	@$(TIMED) package $(MAKE) --no-print-directory package
	@$(TIMED) nbval $(MAKE) --no-print-directory nbval
	@$(TIMED) portable $(MAKE) --no-print-directory portable
	@$(TIMED) site $(MAKE) --no-print-directory site
	@$(TIMED) browser $(MAKE) --no-print-directory browser
	@echo "stage seconds:"; cat $(REPORTS)/stages.txt

# ------------------------------------------------------------------ stages (each runs alone too)
unit: env
	@mkdir -p $(REPORTS)
	$(PY) -m pytest tests -q -p no:cacheprovider --junitxml=$(REPORTS)/unit.xml

# The release files as a user gets them: `python -m build` (sdist, then the wheel from it) into _build/dist,
# the wheel installed with its book extra in a fresh venv (torch first, TORCH_SPEC, as `make env`), every
# module and every notebook import imported there from outside the checkout (scripts/check_package.py).
package: env
	@mkdir -p $(REPORTS)
	$(PY) scripts/check_package.py --torch-spec "$(TORCH_SPEC)" --report $(REPORTS)/package.json

nbval: env
	@mkdir -p $(REPORTS)
	$(NBVAL) $(NOTEBOOKS) --junitxml=$(REPORTS)/nbval.xml

# The notebooks whose outputs include results of a run, re-run where rounding differs: with scalar
# kernels (a stand-in for another kind of CPU) and with one thread. Their exact facts must still match
# digit by digit and their claims must still hold (see retnet_mini/claims.py).
portable: env
	@mkdir -p $(REPORTS)
	$(PERTURBED_ENV) $(NBVAL) $(RUN_RESULT_NOTEBOOKS) --junitxml=$(REPORTS)/portable-perturbed.xml
	$(ONE_THREAD_ENV) $(NBVAL) $(RUN_RESULT_NOTEBOOKS) --junitxml=$(REPORTS)/portable-one-thread.xml

site: env
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

site-fresh: env
	@mkdir -p _build
	$(PY) -c "import yaml; c = yaml.safe_load(open('_config.yml')); c['execute']['execute_notebooks'] = 'force'; \
		yaml.safe_dump(c, open('_build/_config.force.yml', 'w'), sort_keys=False)"
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	$(VENV)/bin/jupyter-book build . --config _build/_config.force.yml $(JB_FLAGS)

browser-setup: env
	PYTHON=$(PY) bash tests/browser/setup.sh

browser: browser-setup
	@mkdir -p $(REPORTS)
	$(PY) -m pytest tests/browser -m browser -q -p no:cacheprovider --junitxml=$(REPORTS)/browser.xml

# ------------------------------------------------------------------ Colab rehearsal (not in `make test`)
# A fresh venv with what Colab has (TORCH_SPEC, ipywidgets 7.7.1, matplotlib, numpy, tqdm, a kernel), a stub
# google.colab and git redirecting repository.url to a snapshot of this checkout: each notebook's own install
# cell installs the package, then the notebook runs outside the checkout. Needs no .venv and no network but
# the package index. COLAB_FLAGS=--working-tree rehearses uncommitted work; see scripts/colab_rehearsal.py.
COLAB_FLAGS ?=
colab:
	$(PYTHON) scripts/colab_rehearsal.py --torch-spec "$(TORCH_SPEC)" $(COLAB_FLAGS)

# ------------------------------------------------------------------ helpers
regen: env
	$(PY) scripts/regen_notebooks.py $(filter %.ipynb,$(NOTEBOOKS))

# After changing repository.url or repository.branch in _config.yml (README, "Publishing"): seconds, not a run.
install-cells: env
	$(PY) scripts/regen_notebooks.py --install-cells $(filter %.ipynb,$(NOTEBOOKS))

serve:
	@echo "serving _build/html on http://127.0.0.1:$(PORT)  (Ctrl-C stops)"
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

screenshot:
	$(PY) -c "from PIL import Image; im = Image.open('_screenshots/book__intro-figure.png').convert('RGB'); \
		im.thumbnail((960, 960)); im.quantize(256, method=Image.Quantize.FASTOCTREE).save('docs/screenshot.png', optimize=True)"

clean:
	rm -rf _build _screenshots

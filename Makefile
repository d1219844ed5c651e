# Stability, Reproduced: every command sets itself up (a .venv from requirements.lock).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Executing the chapters: BOOK_STATIC=1 makes explorables pre-render their frames and keeps
# progress bars (lib.book.progress) out of the pages; each notebook runs once, and nbmake
# writes its outputs in place (--overwrite) for the book build, which never executes.
# `stage` lists in _build/to_execute.txt only the chapters whose inputs changed since their last
# passing run (lib.book.execution_cache); the others reuse that run.
EXECUTE := BOOK_STATIC=1 $(BIN)/pytest --nbmake --overwrite \
	--nbmake-timeout=600 -p lib.book.pytest_chapters -o testpaths= -o addopts= -p no:cacheprovider
# `make execute` runs JOBS chapters at once (pytest-xdist), each kernel on one thread, so that
# the single-threaded stretches of one chapter overlap another's; JOBS=1 runs them one by one.
# `make unit` spreads the unit tests over JOBS workers the same way.
JOBS ?= 2
ifeq ($(JOBS),1)
PARALLEL :=
else
PARALLEL := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PARALLEL_ARGS := -n $(JOBS) --dist load --maxschedchunk 1
endif
BUILD := $(BIN)/jupyter-book build _book --path-output . --builder html

.PHONY: help setup test book lab sync lint unit execute browser chapter clean distclean lock testbed weights
help:
	@echo "make test     set up, lint, unit tests, execute every chapter once, build with -W"
	@echo "make book     set up, execute every chapter once, build _build/html"
	@echo "make lab      Jupyter Lab with Jupytext (the .md chapters open as notebooks)"
	@echo "make chapter CHAPTER=slug   execute one chapter as a test"
	@echo "make browser  open the built pages in headless Chromium, offline (part of make test)"
	@echo "make sync     regenerate paired .ipynb files and _toc.yml after editing chapters"
	@echo "make lock     re-pin requirements.lock from pyproject.toml"
	@echo "make testbed  train the miniature Stable Diffusion testbed (not part of make test)"
	@echo "make weights  retrain the other small weights chapters ship (not part of make test)"
	@echo "make clean    remove _build (make distclean also removes .venv)"

setup: $(STAMP)
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check lib tests book
	$(BIN)/python -m lib.book.build check

unit: setup
	$(PARALLEL) $(BIN)/pytest tests $(PARALLEL_ARGS)

execute: setup
	$(BIN)/python -m lib.book.build stage
	if [ -s _build/to_execute.txt ]; then \
	  $(PARALLEL) $(EXECUTE) $(PARALLEL_ARGS) $$(cat _build/to_execute.txt); fi
	$(BIN)/python -m lib.book.build report

test: lint unit execute
	$(BUILD) -W -n --keep-going
	$(MAKE) --no-print-directory browser
	@echo "reproduction record: _build/reproduction.json"

# The built pages in headless Chromium, offline (tests/browser; needs chromium and chromium-driver
# from Debian, which .ci/run installs). Screenshots land in _build/screenshots/.
browser: setup
	$(BIN)/pytest tests/browser -p no:cacheprovider -q

book: execute
	$(BUILD)
	@echo "open $(CURDIR)/_build/html/index.html"

chapter: setup
	@test -n "$(CHAPTER)" || { echo "usage: make chapter CHAPTER=<slug>"; exit 1; }
	$(BIN)/python -m lib.book.build stage-one $(CHAPTER)
	$(EXECUTE) --durations=1 _chapter/$(CHAPTER).ipynb

# Trains only the stages missing from lib/diffusion/testbed/weights/manifest.json; pass
# TESTBED_ARGS="--force" to retrain everything. --parallel trains the four base stages (text
# encoder, autoencoder, UNet, DiT: about 42 min of recorded training on 2 threads), then the
# fine-tuned stages as two one-thread lanes at once (lib.diffusion.testbed.train.LANES, about
# 27 min of recorded training each): about 70 min from nothing, plus evaluations.
testbed: setup
	$(BIN)/python -m lib.diffusion.testbed.train --parallel $(TESTBED_ARGS)

# The small trained weights that chapters other than the testbed ship, each written by a seeded
# script with a manifest of SHA-256 hashes that the loader verifies. One line per script, as the
# helpers measured them on one contended core: Neur2RO's set-based value network (about 3 min),
# CDVAE's periodic score VAE (165 s), the 2-D rectification toys (124 s), StableNormal's four
# estimators (266 s), tumour-volume registration's two displacement networks (181 s).
weights: setup
	$(BIN)/python -m lib.robust.train_set_value_network
	$(BIN)/python -m lib.materials.train_periodic_score_vae
	$(BIN)/python -m lib.diffusion.train_toy_rectification
	$(BIN)/python -m lib.vision.train_normal_estimators
	$(BIN)/python -m lib.registration.train_displacement_networks

# Jupytext's contents manager lets Lab open the .md chapters as notebooks; the override makes
# that the default viewer for MyST/markdown files, so a double click opens a notebook.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
lab: setup
	mkdir -p $(LAB_SETTINGS)
	echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}}}' > $(LAB_SETTINGS)/overrides.json
	$(BIN)/jupyter lab --ServerApp.contents_manager_class=jupytext.TextFileContentsManager

sync: setup
	$(BIN)/python -m lib.book.build sync

lock:
	rm -rf _build/lockenv && $(PYTHON) -m venv _build/lockenv
	_build/lockenv/bin/python -m pip install --quiet --upgrade pip
	_build/lockenv/bin/python -m pip install --quiet ".[book]"
	{ echo "# Exact versions for the book; generated by 'make lock' from pyproject.toml."; \
	  _build/lockenv/bin/python -m pip freeze --exclude stability-reproduced | sed 's/+cpu$$//'; } > requirements.lock
	rm -rf _build/lockenv

clean:
	rm -rf _build _book _chapter

distclean: clean
	rm -rf $(VENV)

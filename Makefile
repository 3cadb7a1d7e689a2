# jaxae: `make demo` trains the MLP autoencoder on Fashion-MNIST; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=

.PHONY: venv demo test lint fashion-mnist bench docs clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Fashion-MNIST comes from Debian's `dataset-fashion-mnist`; install it when root, else say how.
fashion-mnist:
	@if [ -n "$$JAXAE_DATA_DIR" ] && [ -f "$$JAXAE_DATA_DIR/fashion-mnist/train-images-idx3-ubyte.gz" ]; then \
	  echo "Fashion-MNIST: using $$JAXAE_DATA_DIR/fashion-mnist"; \
	elif [ -f "$(FASHION_DIR)/train-images-idx3-ubyte.gz" ]; then \
	  echo "Fashion-MNIST: found in $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = "0" ]; then \
	  echo "Fashion-MNIST missing: installing Debian package dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
	  echo "Fashion-MNIST is missing from $(FASHION_DIR). Fix it with:"; \
	  echo "  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"; \
	  echo "or set JAXAE_DATA_DIR to a folder holding fashion-mnist/*-idx?-ubyte.gz"; \
	  exit 1; \
	fi

demo: venv fashion-mnist
	$(PY) -m experiments.train --config experiments/configs/demo.py --workdir runs/demo $(DEMO_ARGS)

test: venv fashion-mnist
	$(PY) -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv fashion-mnist
	$(PY) -m benchmarks.train_speed

# The documentation site (docs/, mkdocs.yml) into build/site, offline and in strict mode: a broken
# link or cross-reference, or a public function without a docstring (docs/hooks.py), fails it.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) runs .pytest_cache

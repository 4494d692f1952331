# Set-up and everyday commands. `make demo` and `make test` create .venv on first use,
# install the CPU build of torch pinned in constraints.txt first, then this package.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# posteriordb reference folder (data + reference draws), read at run time by the benchmark
POSTERIORDB ?= ../shared/posteriordb
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-slow lint bench bench-numpyro tutorials mutate clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,notebooks]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/ppl-vi demo --out runs/demo

lint: setup
	$(BIN)/ruff check .

# the default suite on every core (pytest-xdist); each test process uses one torch thread
test: lint
	$(BIN)/python -m pytest -n auto -m "not slow"

# Rebuild the tutorial notebooks from tutorials/*.py and execute them (full mode, ~30 min).
tutorials: setup
	$(BIN)/ppl-vi tutorials build
	$(BIN)/ppl-vi tutorials run

test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/run_all.py --reference-dir $(POSTERIORDB)
	$(BIN)/python benchmarks/polish.py
	$(BIN)/python benchmarks/elbos.py
	$(BIN)/python benchmarks/guides.py
	$(BIN)/python benchmarks/sbn.py
	$(BIN)/python benchmarks/vae.py
	$(BIN)/python benchmarks/reference_posteriors.py --reference-dir $(POSTERIORDB)
	$(BIN)/python benchmarks/gaussian_vi.py --reference-dir $(POSTERIORDB)

# NumPyro (CPU JAX) for the NumPyro baselines of benchmarks/run_all.py
bench-numpyro: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[numpyro]"

# Mutation testing (benchmarks/mutate.py): `make mutate MODULES="ppl_vi/engine.py guides/iaf.py"`
# runs those modules (each well within an hour), `make mutate` every module of the list in
# benchmarks/mutate.py (several hours); reports in benchmarks/results/mutation/.
MODULES ?= --all
mutate: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[mutation]"
	$(BIN)/python benchmarks/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mutation

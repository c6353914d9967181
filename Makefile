# bayescannon — set-up, demo, tests and benchmarks.
# `make demo` and `make test` work on a fresh machine: they create .venv with a
# Python >= 3.12 (found by scripts/find-python.sh) and install the package into it.

VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: setup warmup lint demo test test-all docs bench bench-quick bench-all clean

setup: $(STAMP)

# the install ends by compiling the numba kernels into their on-disk cache (~1-2 min once),
# so that the first demo/train/infer starts warm instead of compiling for ~40 s
$(STAMP): pyproject.toml
	@PYBIN=$$(scripts/find-python.sh) && echo "using $$PYBIN" && \
	  { [ -x $(PY) ] || $$PYBIN -m venv $(VENV); }
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m bayescannon._warmup
	@touch $(STAMP)

# again after editing a kernel or upgrading numba (a cache miss otherwise costs one compile,
# announced by a log line, at first use)
warmup: setup
	$(PY) -m bayescannon._warmup

# ruff lint and format check (rules in pyproject.toml) over the package, tests, benchmarks and scripts
lint: setup
	$(VENV)/bin/ruff check bayescannon tests benchmarks scripts
	$(VENV)/bin/ruff format --check bayescannon tests benchmarks scripts

demo: setup
	$(VENV)/bin/bayescannon demo --outdir demo_output

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

# the documentation site (docs/_build/html): warnings are errors, notebooks are executed
$(VENV)/.docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	@touch $@

docs: $(VENV)/.docs
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	@touch $@

bench: $(VENV)/.bench
	$(PY) benchmarks/bench_core.py

bench-quick: $(VENV)/.bench
	$(PY) benchmarks/bench_core.py --quick

bench-all: $(VENV)/.bench
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_bayes.py
	$(PY) benchmarks/bench_preprocess.py
	$(PY) benchmarks/bench_validate.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache docs/_build docs/api docs/notebooks docs/jupyter_execute

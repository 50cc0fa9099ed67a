# Two commands a newcomer needs: `make demo` and `make test`. Both install into $(VENV) first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests pin JAX to CPU so a GPU machine runs the same suite CI runs. XLA:CPU's large per-step buffers on
# transparent huge pages (`python -m wam_jax` sets this itself: wam_jax/tools/hugepages.py; glibc < 2.35
# ignores it).
TEST_ENV := JAX_PLATFORMS=cpu GLIBC_TUNABLES=glibc.malloc.hugetlb=1

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -n 2 --durations=15 tests

demo: $(STAMP)
	$(PY) -m wam_jax demo --out out/demo

clean:
	rm -rf out .pytest_cache

# Every install step lives here, so a fresh machine needs only `make test` or `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned in the same pip command as everything else, or pip would fetch a CUDA build.
TORCH  := torch==2.13.0

.PHONY: venv test demo bench-wire vectors clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/meshnode inspect protocol/vectors/*.bin

bench-wire: venv
	$(PY) benches/bench_wire.py

vectors: venv
	$(PY) protocol/make_vectors.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

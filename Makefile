# Two entry points: `make demo` (whole default experiment through Dagster) and `make test`.
# Both create the virtualenv and install on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python

export CORPUSLAB_HOME ?= $(CURDIR)/.corpuslab
export DAGSTER_HOME   ?= $(CORPUSLAB_HOME)/dagster
export DS_ACCELERATOR ?= cpu
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(CORPUSLAB_HOME)/mlflow/mlflow.db

.PHONY: install chromium demo test lint ui mlflow corpus clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch lies on disk; install it first so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

corpus: install
	$(PY) -m corpuslab.ingest.democorpus --out $(CORPUSLAB_HOME)/raw

demo: install
	$(VENV)/bin/corpuslab demo

# The UI tests (tests/ui) drive Debian's chromium through Playwright, never a downloaded browser
# (no `playwright install`): installed with apt when it is missing, as root or through sudo.
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

chromium:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

test: install chromium
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright

ui: install
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp infra/dagster/local.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev

# MLflow's job runner serves GenAI features this UI does not use (8 processes, ~30 s to stop).
mlflow: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)

clean:
	rm -rf $(CORPUSLAB_HOME)

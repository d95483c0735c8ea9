# The two commands of the README: `make run` and `make test`. Both build the virtual
# environment on first use, so a new machine needs nothing but Python >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two installs: `make run` needs the package and the dev broker only (.[dev]); `make test`
# adds the test, lint and chart-checking tools (.[dev,test]), several hundred MB more.
STAMP     := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
IMAGE      ?= localhost/cardq:dev
BASE_IMAGE ?= localhost/cardq-base:python3.11-bookworm

.PHONY: run test lint typecheck unit bench image lock clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(RUN_STAMP)

run: $(RUN_STAMP)  ## the main job on an embedded default: local broker + simulator + worker
	$(BIN)/cardq dev $(ARGS)

test: $(STAMP) lint typecheck unit  ## the whole test suite

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard bench)
	$(BIN)/ruff format --check worker tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks (not part of the test suite); a full run rewrites README's Performance
	$(BIN)/python -m bench $(ARGS)
	$(if $(ARGS),,$(BIN)/python -m bench.readme)

image:  ## the container image, built with buildah (see README, "Container image")
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) deploy/image/build.sh

# The image installs exactly what these files pin. Refresh them after changing pyproject's
# dependencies (tests/test_lock.py says when); `make lock UPGRADE=1` takes the newest versions.
LOCK_ARGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet
lock: $(RUN_STAMP)
	$(BIN)/pip install --quiet 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml $(LOCK_ARGS) $(if $(UPGRADE),--upgrade) -o requirements.lock
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
		| $(BIN)/uv pip compile - $(LOCK_ARGS) $(if $(UPGRADE),--upgrade) -o requirements-build.lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

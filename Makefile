# sealift: make targets wrap the CLI. Everything runs from a venv in .venv.
#   make install                 venv + sealift + torch (CPU) + test deps
#   make bento MODEL=DIR [NAME=N] import then build (NAME: MODEL's last part, lowercased;
#                               target cpu by default: TARGET=gpu adds vllm)
#   make export NAME=N DEST=DIR  write a verified bundle to DEST
#   make install-bundle BUNDLE=DIR  on the air-gapped host
#   make start NAME=N            serve on 127.0.0.1:3000
#   make demo                    the whole path on a tiny model, end to end
#   make test                    the test suite CI runs
#   make test-full               plus the long load test and test-floors
#   make test-floors             the path at the lowest versions pyproject.toml allows (~10 min, needs cc)
#   make bench                   the benchmarks (import, serve, export)
# export --sign, install --allowed-signers and their tests call ssh-keygen: openssh-client (Debian),
# already in the base image; `make install` says so when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
SEALIFT := $(BIN)/sealift
TARGET ?= cpu
PORT   ?= 3000

.PHONY: install bento export install-bundle start demo test test-full test-floors bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	# torch is pinned to the CPU build first so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,dev]'
	touch $@

install: $(VENV)/.installed
	@command -v ssh-keygen >/dev/null || echo "note: ssh-keygen not found: apt-get install openssh-client (signed bundles)"

# NAME defaults to the last part of MODEL, lowercased: /models/Qwen2.5-7B and Qwen/Qwen2.5-7B give qwen2.5-7b.
bento: NAME ?= $(shell printf '%s' '$(notdir $(patsubst %/,%,$(MODEL)))' | tr '[:upper:]' '[:lower:]')
bento: install
	@test -n "$(MODEL)" -a -n "$(NAME)" || { echo "usage: make bento MODEL=<dir or id> [NAME=<name>] [TARGET=cpu|gpu]"; exit 2; }
	$(SEALIFT) import "$(MODEL)" --name "$(NAME)" $(IMPORT_FLAGS)
	$(SEALIFT) build "$(NAME)" --target $(TARGET)

export: install
	@test -n "$(NAME)" -a -n "$(DEST)" || { echo "usage: make export NAME=<name> DEST=<dir>"; exit 2; }
	$(SEALIFT) export "$(NAME)" "$(DEST)" $(EXPORT_FLAGS)

install-bundle: install
	@test -n "$(BUNDLE)" || { echo "usage: make install-bundle BUNDLE=<dir>"; exit 2; }
	$(SEALIFT) install "$(BUNDLE)"

start: install
	@test -n "$(NAME)" || { echo "usage: make start NAME=<name>"; exit 2; }
	$(SEALIFT) start "$(NAME)" --port $(PORT)

demo: install
	$(PY) scripts/demo.py

# -n auto: one worker per core (at most 4); --dist loadfile keeps each file's fixtures in one worker.
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: install
	$(BIN)/pytest -q -m "not slow" $(XDIST)

test-full: install
	$(BIN)/pytest -q $(XDIST)

# A venv at pyproject.toml's floors (uv --resolution lowest-direct, each held ==; psutil 5.0.0 builds from
# source) runs import, build, export, install and serve on a tiny model, then the version-sensitive tests.
test-floors: install
	$(BIN)/pytest -q -m floors tests/test_floors.py

bench: install
	$(PY) scripts/bench_import.py
	$(PY) scripts/bench_serve.py
	$(PY) scripts/bench_export.py

clean:
	rm -rf $(VENV) .venv-floors .pytest_cache demo-out

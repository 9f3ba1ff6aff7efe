# convserve: the README's commands. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODELS_DIR ?= models
MODEL ?= fashion
# Debian packages the project needs: the real dataset.
APT_PACKAGES := dataset-fashion-mnist
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install system-packages run train test cluster-test fuzz soak lint format clean proto bench docs

install: system-packages $(VENV)/.installed

system-packages:
	@missing="$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi

# Reinstalled when the dependencies change; constraints.txt pins every version we test with.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,serve,plots,dev]'
	# tritonclient, for the V2 interoperability tests, asks for protobuf<7 and ml-dtypes<=0.5.4,
	# which our stubs and TensorFlow have outgrown; its gRPC client runs on them (the tests
	# prove it), so it is installed without its pins. Its own dependencies are in [dev].
	$(BIN)/pip install --quiet --no-deps -c constraints.txt tritonclient
	touch $@

# Train the default model if there is none yet, then serve every model (Ctrl-C stops).
run: install
	@if ! ls -d $(MODELS_DIR)/*/[0-9]* >/dev/null 2>&1; then \
		$(BIN)/convserve train --preset seed --name $(MODEL) --models-dir $(MODELS_DIR); \
	fi
	exec $(BIN)/convserve serve --models-dir $(MODELS_DIR) --default-model $(MODEL)

train: install
	$(BIN)/convserve train --preset seed --name $(MODEL) --models-dir $(MODELS_DIR)

# The tests also run deploy/'s topology on loopback (Envoy from PyPI, Prometheus from Debian)
# and drive the explorer page in Debian's Chromium (with Playwright, never `playwright install`).
TEST_APT_PACKAGES := prometheus chromium
test: install
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(TEST_APT_PACKAGES)"
	$(BIN)/python -m pytest

# Just that topology: 3 replicas + Envoy + Prometheus; spread, kill -9, SIGTERM, counts.
cluster-test: install
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(TEST_APT_PACKAGES)"
	$(BIN)/python -m pytest -s tests/deploy/test_cluster.py

# The fuzz test at full length: 10,000 random and malformed requests over the wire.
fuzz: install
	FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -s tests/integration/test_fuzz.py

# 10 minutes of mixed load with bad requests and a hot reload half-way (needs a model).
soak: install
	$(BIN)/python bench/soak.py --models-dir $(MODELS_DIR) --model $(MODEL)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Regenerate the settings table in docs/serving.md from service/settings.py (a test checks they
# agree): the table's lines, from its header row to the first line that is not a table row.
docs: install
	$(BIN)/python -c 'import re, pathlib; from service.settings import settings_table as t; \
	p = pathlib.Path("docs/serving.md"); \
	s, n = re.subn(r"^\| flag \| environment .*?(?=\n(?!\|)|\Z)", lambda m: t(), p.read_text(), \
	               count=1, flags=re.S | re.M); \
	assert n == 1, f"{p}: no settings table to regenerate"; p.write_text(s)'

# Regenerate the committed gRPC stubs; tests/test_proto.py fails when they drift.
PB_DIR ?= convserve/api/pb
PROTOS := $(shell find proto -name '*.proto' | sort)
proto: install
	rm -rf $(PB_DIR) && mkdir -p $(PB_DIR)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(PB_DIR) --pyi_out=$(PB_DIR) \
		--grpc_python_out=$(PB_DIR) $(PROTOS)
	# protoc writes absolute imports of the proto package; the stubs live under convserve.api.pb.
	find $(PB_DIR) -name '*.py*' -exec sed -i -E \
		's/^from (convserve\.v1|inference) import/from convserve.api.pb.\1 import/' {} +
	find $(PB_DIR) -type d -exec touch {}/__init__.py \;

# Performance against the no-op gRPC ceiling (numbers, not tests); needs h2load and a model.
BENCH_APT_PACKAGES := nghttp2-client linux-perf
bench: install
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	@ls -d $(MODELS_DIR)/$(MODEL)/[0-9]* >/dev/null 2>&1 || \
		$(BIN)/convserve train --preset seed --name $(MODEL) --models-dir $(MODELS_DIR)
	PATH=$(BIN):$$PATH $(BIN)/python bench/run.py --models-dir $(MODELS_DIR) --model $(MODEL) \
		--profile bench/profile.txt

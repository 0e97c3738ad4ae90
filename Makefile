# giftcoin: `make test` and `make demo` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp
export GIFTCOIN_DEV_MODE ?= true

.PHONY: all install gen lint-protos breaking baseline lint typecheck host-tools pytest test demo bench image run-wallet run-gifting run-payout clean

all: test

# A virtual environment with the pinned dependencies; the repository root and
# the generated contracts are put on its path by a .pth file.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c 'import site; open(site.getsitepackages()[0] + "/giftcoin-gen.pth", "w").write("$(CURDIR)/gen\n")'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# Python code from the contracts, with typed stubs (mypy-protobuf).
$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
	  --mypy_out=gen --mypy_grpc_out=gen --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc $(PROTOS)
	@touch $@

gen: $(GEN_STAMP)

lint-protos: $(STAMP)
	cd protos && ../$(BIN)/buf lint

# Fails on a breaking change against the committed baseline image.
breaking: $(STAMP)
	cd protos && ../$(BIN)/buf breaking --against baseline/giftcoin.binpb

# Accept the current contracts as the new baseline (only for a reviewed change).
baseline: $(STAMP)
	cd protos && ../$(BIN)/buf build -o baseline/giftcoin.binpb

lint: $(GEN_STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/lint-imports --no-logo

typecheck: $(GEN_STAMP)
	$(BIN)/mypy

pytest: $(GEN_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# podman, debootstrap and promtool for the image and monitoring tests: installed from Debian's
# packages when missing (as root with apt-get); otherwise those tests skip, saying why.
host-tools:
	@bash docker/host-tools.sh

test: lint-protos breaking lint typecheck host-tools pytest

# The container image, built with podman (IMAGE_BASE=pinned: from the Dockerfile's pinned base,
# which needs its registry; by default from a Debian base made here). tests/deploy/test_image_runs.py
# builds it too and runs the suite from it.
IMAGE ?= localhost/giftcoin:dev
image:
	bash docker/build-image.sh $(IMAGE)

demo: $(GEN_STAMP)
	$(BIN)/giftctl demo

# The load benchmark (not a test): the suite as three processes, on PostgreSQL when
# GIFTCOIN_TEST_POSTGRES (or --postgres) gives a DSN, else SQLite. BENCH_ARGS="--help" for options.
bench: $(GEN_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

run-wallet: $(GEN_STAMP)
	$(PY) -m services.wallet

run-gifting: $(GEN_STAMP)
	$(PY) -m services.gifting

run-payout: $(GEN_STAMP)
	$(PY) -m services.payout

clean:
	rm -rf gen .data .pytest_cache .mypy_cache .ruff_cache

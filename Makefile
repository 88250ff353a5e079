# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-sweep install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,rocksdb,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stream-app demo

test: $(STAMP)
	$(BIN)/ruff check stream_app tests
	$(BIN)/python -m pytest

# Throughput and latency against its own embedded broker; writes bench-results.json.
bench: $(STAMP)
	$(BIN)/stream-app bench

# Scaling curves (customers, K, memory and RocksDB stores); writes bench-sweep.json.
bench-sweep: $(STAMP)
	$(BIN)/stream-app bench --sweep

lint: $(STAMP)
	$(BIN)/ruff check stream_app tests

clean:
	rm -rf $(VENV) data .pytest_cache

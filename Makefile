# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Where `make docs` builds the site (never committed: build/ is in .gitignore).
SITE   ?= build/site

.PHONY: demo test test-fast lint docs bench bench-sweep soak install ops-tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,rocksdb,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stream-app demo

test: $(STAMP) ops-tools
	$(BIN)/ruff check stream_app tests ops examples docs
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --quiet --site-dir $(SITE)
	$(BIN)/python -m pytest

# The unit tier and the doctests: no broker, no worker process, no system packages.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit stream_app

# Throughput and latency against its own embedded broker; writes bench-results.json.
bench: $(STAMP)
	$(BIN)/stream-app bench

# Scaling curves (customers, K, memory and RocksDB stores); writes bench-sweep.json.
bench-sweep: $(STAMP)
	$(BIN)/stream-app bench --sweep

# 10 minutes at 50 %, then 10 at 80 % of the worker's measured maximum (own embedded broker,
# RocksDB each): p99 latency (≤ 250 ms and flat per minute at 50 %, ≤ 1 s at 80 %), lag
# (≤ 2 s), RSS and input = processed + DLQ checked; writes soak-50-results.json and
# soak-results.json, fails if a check of either does.
soak: $(STAMP)
	$(BIN)/stream-app soak --fraction 0.5 --max-p99-ms 250 --out soak-50-results.json; \
	  half=$$?; $(BIN)/stream-app soak --fraction 0.8 --max-p99-ms 1000; \
	  full=$$?; test $$half = 0 -a $$full = 0

# Debian's Prometheus (with promtool) and docker-compose, for the operations tests, and
# Chromium with its WebDriver, for the browser test of the segment map.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Without apt (or rights), the tests that need them fail (the browser test skips) and say
# what is missing.
ops-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null \
	  && command -v docker-compose >/dev/null \
	  && command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
	      -y -qq --no-install-recommends prometheus docker-compose chromium chromium-driver) \
	  || echo "make ops-tools: could not install prometheus, docker-compose, chromium and" \
	          "chromium-driver (Debian packages)"

# Style, the layers of stream_app (the contracts in pyproject.toml, [tool.importlinter])
# and the docs site.
lint: $(STAMP) docs
	$(BIN)/ruff check stream_app tests ops examples docs
	$(BIN)/lint-imports

# The docs site (mkdocs.yml, docs/): strict, so a broken link or anchor, a page missing
# from the nav or a setting without a description fails; the configuration table is
# generated from stream_app/config.py (docs/hooks/configuration.py).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir $(SITE)

clean:
	rm -rf $(VENV) data .pytest_cache $(SITE)

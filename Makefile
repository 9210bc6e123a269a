# One command to serve, one to test. Everything they need is installed by the targets themselves.
CARGO ?= cargo
ARGS ?=

FUZZ_SECS ?= 60

.PHONY: conformance demo fleet fuzz run build runtime test lint bench bench-load bench-predictions bench-store bench-batch bench-sourcing bench-supply train fmt

## Serve the shipped models on 127.0.0.1:8000 (flags: make run ARGS="--addr 0.0.0.0:8000").
run: build
	$(CARGO) run --release --quiet --bin mercator -- serve $(ARGS)

## `make run` with the demo organization loaded (once) from the fixture: what to try is printed on start.
demo: build
	$(CARGO) run --release --quiet --bin mercator -- serve --demo $(ARGS)

## N replicas (default 3) on one PostgreSQL database and Redis, ports 8001.., to try a fleet.
fleet: runtime
	scripts/fleet.sh $(or $(N),3) $(ARGS)

## Build target/release/mercator.
build: runtime
	$(CARGO) build --release --bin mercator

## Install libonnxruntime.so (from PyPI's onnxruntime wheel) into .runtime/lib.
runtime:
	@scripts/install-runtime.sh

## The whole test suite: unit, integration (real HTTP, real ONNX Runtime), tritonclient.
test: runtime
	$(CARGO) test --workspace

## Every input reader (V2 JSON and binary, CSV and JSON bodies, manifests, features.toml, feature assembly)
## under mutated inputs from fuzz/corpus/, FUZZ_SECS seconds each (the test suite runs 256 cases each).
fuzz: runtime
	MERCATOR_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test -p mercator-server --lib properties -- --nocapture

## schemathesis (every check) against a running server with an owner key, DURATION seconds (default 300).
conformance: runtime
	scripts/conformance.sh

## Formatting and lints, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Criterion micro-benchmarks: raw ONNX Runtime calls and the scheduler's overhead.
bench: runtime
	$(CARGO) bench -p mercator-benches

## The load benchmark (wrk on loopback) against Mercator, the echo ceiling and the naive mutex server.
bench-load: runtime
	benches/load.sh

## End-to-end price predictions under load (wrk on loopback) against the echo ceiling.
bench-predictions: runtime
	benches/predictions.sh

## The store benchmark: bulk ingest rows/s and list/range query latency on 1,000,000 prices, SQLite and PostgreSQL.
bench-store: runtime
	benches/store.sh

## Batch jobs: rows/s of 100k- and 1M-row jobs against the raw ONNX Runtime ceiling, peak RSS, and
## interactive p50/p99 with and without a job running.
bench-batch: runtime
	benches/batch.sh

## Sourcing: quote submission (lines/s, each line benchmarked) for an RFQ of 1,000 lines x 10 suppliers, and
## the comparison's render time.
bench-sourcing: runtime
	benches/sourcing.sh

## Supply: importing three years of orders and deliveries, risk for every supplier, policies for 1,000
## materials (p50, p99).
bench-supply: runtime
	benches/supply.sh

## Regenerate fixtures/prices.csv and retrain the shipped models (not needed to run or test). Version 1
## computed its features in numpy; version 2 of each goes through `mercator features materialize`.
train:
	python3 -m venv .venv-train
	.venv-train/bin/pip install --quiet -r models/train/requirements.txt
	.venv-train/bin/python models/train/generate_data.py
	.venv-train/bin/python models/train/train.py
	.venv-train/bin/python models/train/price.py
	.venv-train/bin/python models/train/anomaly.py
	.venv-train/bin/python models/train/forecast.py
	.venv-train/bin/python models/train/generate_supply.py
	.venv-train/bin/python models/train/risk.py
	.venv-train/bin/python models/train/demand.py

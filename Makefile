# Sterling: the one place the project's commands live.
CARGO ?= cargo
DATA ?= data
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: run build test lint fmt bench clean

## run: the whole bank in one process on embedded backends (no Java, no NATS needed)
run: build
	$(TARGET_DIR)/debug/sterling --data $(DATA) up

build:
	$(CARGO) build --workspace --bins

## test: every unit, conformance and end-to-end test on the embedded backends
test:
	$(CARGO) test --workspace

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: authorisation latency and throughput through card-api (see docs/benchmarks.md)
bench:
	$(CARGO) build --release -p sterling
	$(TARGET_DIR)/release/sterling bench --payments 2000 --concurrency 1
	$(TARGET_DIR)/release/sterling bench --payments 5000 --concurrency 16

clean:
	rm -rf $(DATA)

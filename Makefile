# Sterling: the one place the project's commands live.
CARGO ?= cargo
GO ?= go
DATA ?= data
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: run acceptance acceptance-continuous test-acceptance soak build test test-api test-first-service test-engines engines-up engines-down lint fmt bench bench-engines clean images compose-test k8s-check

## run: the whole bank in one process on embedded backends (no Java, no NATS needed)
run: build
	STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS=$${STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS:-true} \
	STERLING_ACCOUNTS_DEVELOPMENT_TERMINAL=$${STERLING_ACCOUNTS_DEVELOPMENT_TERMINAL:-true} \
	STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS=$${STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS:-true} \
		$(TARGET_DIR)/debug/sterling --data $(DATA) up

## acceptance: every acceptance journey once against the bank `make run` started (gateway
## :8000, card-api :8080, the push sink from $(DATA)/endpoints.json); a JUnit report in
## $(TARGET_DIR)/acceptance.xml. STERLING_ACCEPTANCE_* point it at any other deployment.
acceptance:
	$(CARGO) build -p sterling-acceptance
	$(TARGET_DIR)/debug/sterling-acceptance --once --endpoints $(DATA)/endpoints.json \
		--junit $(TARGET_DIR)/acceptance.xml

## acceptance-continuous: the continuous mode for ten minutes against a bank in another
## process: every run passes, memory and the account's money stay flat, metrics scraped
acceptance-continuous:
	$(CARGO) test -p sterling --test acceptance_continuous -- --ignored --nocapture

## test-acceptance: start a bank as `make run` does, run `make acceptance`'s journeys, stop it
test-acceptance:
	.ci/acceptance embedded

build:
	$(CARGO) build --workspace --bins

## test: every unit, conformance and end-to-end test on the embedded backends
test:
	$(CARGO) test --workspace
	cd bench/grpc-go-probe && $(GO) vet ./... && $(GO) test ./...

## test-api: the public API against its OpenAPI document with schemathesis (from PyPI)
test-api:
	.ci/test-api

## test-first-service: follow docs/first-service.md literally (make a service, test it, start it
## with the bank), then remove what it made
test-first-service:
	.ci/first-service

## engines-up / engines-down: one Cassandra node and one NATS server on loopback (fetched on first use)
engines-up:
	deploy/local/cassandra.sh up
	deploy/local/nats.sh up

engines-down:
	deploy/local/nats.sh stop
	deploy/local/cassandra.sh stop

## test-engines: the conformance suites and the authorisation tests on Cassandra + NATS (the
## money rules under fail points, a tight budget and kill -9 included), then the fault tests
## (NATS restarted, Cassandra stopped, a service killed, a stream through both outages)
test-engines:
	deploy/local/cassandra.sh clean
	deploy/local/nats.sh clean
	$(MAKE) engines-up
	$(CARGO) test -p sterling-storage --test cassandra_conformance -- --ignored
	$(CARGO) test -p sterling-bus --test nats_conformance -- --ignored
	$(CARGO) test -p sterling-template --test discovery_conformance -- --ignored
	STERLING_TEST_ENGINES=real $(CARGO) test -p card-processing --test announce
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test authorisation -- --test-threads=3
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test async_path -- --test-threads=1
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test balance
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test payment_life
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test payment_machine
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test money_rules -- --test-threads=1
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test kill_nine
	STERLING_TEST_ENGINES=real STERLING_HEALTH_INTERVAL_MS=500 \
		$(CARGO) test -p sterling --test engine_faults -- --ignored --test-threads=1
	.ci/acceptance real
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test soak -- --ignored --nocapture
	STERLING_TEST_ENGINES=real $(CARGO) test -p sterling --test leftovers -- --ignored

## soak: 10,000 payments from many customers, every service its own process, while services
## are SIGKILLed and NATS and Cassandra restart; reconciled afterwards (docs/reliability.md)
soak:
	deploy/local/cassandra.sh clean
	deploy/local/nats.sh clean
	$(MAKE) engines-up
	STERLING_TEST_ENGINES=real STERLING_SOAK_PAYMENTS=$${STERLING_SOAK_PAYMENTS:-10000} \
		$(CARGO) test -p sterling --test soak -- --ignored --nocapture

## images: every service as its own image from a static (musl) binary, and the engines'
## images from Debian, Maven Central and PyPI (podman; CONTAINER_ENGINE=docker for Docker)
images:
	deploy/container/images.sh all

## compose-test: the whole bank in containers with podman-compose: payments through card-api,
## the feed and the push sink; a service SIGKILLed and restarted; NATS stopped and started;
## then every acceptance journey against the containers
compose-test:
	CARGO="$(CARGO)" deploy/compose/test.sh

## k8s-check: deploy/k8s/base matches the access rules; every overlay builds (kustomize) and
## decodes strictly into the Kubernetes API types
k8s-check:
	CARGO="$(CARGO)" deploy/k8s/check.sh

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) machete cli acceptance services $(filter-out libs/workspace-hack,$(wildcard libs/*))
	$(CARGO) hakari generate --diff
	$(CARGO) hakari manage-deps --dry-run

fmt:
	$(CARGO) fmt --all

## bench: open-loop load at fixed arrival rates with the whole bank keeping up (authorisation,
## feed, push and webhook latency, consumer backlog), closed-loop authorisation latency, and one
## hop of the template against bare tonic and grpc-go in the same run (see docs/benchmarks.md)
bench:
	$(CARGO) build --release -p sterling
	cd bench/grpc-go-probe && $(GO) build -o $(abspath $(TARGET_DIR))/grpc-go-probe .
	$(TARGET_DIR)/release/sterling load --rates 50,100,200,400,800,1000 --seconds 30
	$(TARGET_DIR)/release/sterling bench --payments 2000 --concurrency 1
	$(TARGET_DIR)/release/sterling bench --payments 5000 --concurrency 16
	$(TARGET_DIR)/grpc-go-probe > $(TARGET_DIR)/grpc-go-probe.out & echo $$! > $(TARGET_DIR)/grpc-go-probe.pid; \
	  sleep 1; address=$$(sed -n 's/^listening //p' $(TARGET_DIR)/grpc-go-probe.out); \
	  $(TARGET_DIR)/release/sterling bench-hop --calls 10000 --grpc-go $$address; status=$$?; \
	  kill $$(cat $(TARGET_DIR)/grpc-go-probe.pid); exit $$status
	$(TARGET_DIR)/release/sterling bench-push --swipes 300

## bench-engines: the same on Cassandra + NATS
bench-engines: engines-up
	$(CARGO) build --release -p sterling
	$(TARGET_DIR)/release/sterling bench --engines real --payments 1000 --concurrency 1
	$(TARGET_DIR)/release/sterling bench --engines real --payments 2000 --concurrency 16
	$(TARGET_DIR)/release/sterling load --engines real --rates 25,50,100,200 --seconds 30

clean:
	rm -rf $(DATA)

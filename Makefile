# The two commands: `make run` (the whole system locally) and `make test`
# (every test). First-time setup — the emulator's pinned Python
# environment — happens inside them.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
# Python environments live outside the clone, keyed by their requirements,
# so fresh clones on one machine reuse them.
CACHE_DIR ?= $(HOME)/.cache/chat-platform
MOTO_REQ := localstack/requirements-moto.txt
GRPC_REQ := tests/python/requirements-grpc.txt
LOCALSTACK_REQ := localstack/requirements-localstack.txt
DEPLOY_REQ := tools/requirements-deploy.txt
MOTO_VENV ?= $(CACHE_DIR)/venv-moto-$(shell sha256sum $(MOTO_REQ) | cut -c1-16)
GRPC_VENV ?= $(CACHE_DIR)/venv-grpc-$(shell sha256sum $(GRPC_REQ) | cut -c1-16)
LOCALSTACK_VENV ?= $(CACHE_DIR)/venv-localstack-$(shell sha256sum $(LOCALSTACK_REQ) | cut -c1-16)
DEPLOY_VENV ?= $(CACHE_DIR)/venv-deploy-$(shell sha256sum $(DEPLOY_REQ) | cut -c1-16)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# The metrics test's Prometheus server: Debian's package, unpacked into the
# cache (tools/install-prometheus.sh).
PROMETHEUS_DIR ?= $(CACHE_DIR)/prometheus-2.42
PROMETHEUS := $(PROMETHEUS_DIR)/usr/bin/prometheus
# The browser tests' Chromium and WebDriver: Debian's packages
# (tools/install-chromium.sh).
CHROMEDRIVER := /usr/bin/chromedriver
# The web app's npm packages, as package-lock.json pins them.
WEB_MODULES := web/node_modules/.installed

.PHONY: help run test prefetch build web test-web venv lint fmt-check clippy test-provision test-rust test-localstack build-functions chat deploy destroy localstack localstack-down bench

help:
	@echo "make run    start the emulator, provision it, run the functions, the channel simulator, two gateways and the web app (Ctrl-C stops all)"
	@echo "make test   rustfmt check, clippy -D warnings, template lint, the web app's unit tests, provisioning check, unit, end-to-end and browser tests (on moto, then on LocalStack), the functions' Lambda build"
	@echo "make web    build the web app: web/dist (production) and web/dist-dev (development sign-in, for make run)"
	@echo "make chat NAME=alice PORT=50051 ROOM=room1   an interactive client against a running 'make run'"
	@echo "make deploy / make destroy   the stack on AWS with SAM (first deploy guided)"
	@echo "make bench  the benchmark matrix (release builds): CSV, PNG plots and ratios in bench/results/"
	@echo "make localstack / make localstack-down   LocalStack 4.14.0 in Docker on :4566, provisioned (needs a Docker engine)"

# $(call install_venv,DIR,REQUIREMENTS,WHAT): a pinned Python environment.
# The directory is named by the requirements' hash, so an environment is
# installed once per content (order-only prerequisites: a fresh clone's newer
# file times do not reinstall it). Built aside under a lock and published by
# an atomic rename, so a `make test` using it is never disturbed and two
# makes do not build it twice (tools/install-venv.sh).
define install_venv
	@echo "==> installing $(3) into $(1) (first run only)"
	bash tools/install-venv.sh $(1) $(2) $(PYTHON)
endef

$(MOTO_VENV)/.installed: | $(MOTO_REQ)
	$(call install_venv,$(MOTO_VENV),$(MOTO_REQ),the pinned emulator environment)

$(GRPC_VENV)/.installed: | $(GRPC_REQ)
	$(call install_venv,$(GRPC_VENV),$(GRPC_REQ),the generic Python gRPC client environment)

$(LOCALSTACK_VENV)/.installed: | $(LOCALSTACK_REQ)
	$(call install_venv,$(LOCALSTACK_VENV),$(LOCALSTACK_REQ),LocalStack 4.9.2 for host mode)

$(DEPLOY_VENV)/.installed: | $(DEPLOY_REQ)
	$(call install_venv,$(DEPLOY_VENV),$(DEPLOY_REQ),the pinned deployment tools (SAM CLI, cargo-lambda, zig))

venv: $(MOTO_VENV)/.installed $(GRPC_VENV)/.installed

$(PROMETHEUS):
	@echo "==> unpacking Prometheus into $(PROMETHEUS_DIR) (first run only)"
	bash tools/install-prometheus.sh $(PROMETHEUS_DIR)

$(CHROMEDRIVER):
	bash tools/install-chromium.sh

# npm ci under a lock: the background prefetch and a step that needs the
# packages may ask at once.
$(WEB_MODULES): web/package-lock.json
	@echo "==> installing the web app's npm packages"
	cd web && flock .npm-ci.lock bash -c '[ -e node_modules/.installed -a node_modules/.installed -nt package-lock.json ] || { npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; }'

# The web app: web/dist (production: no development sign-in) and
# web/dist-dev (what `make run` serves), each from proto/chat.proto.
web: $(WEB_MODULES)
	@echo "==> building the web app"
	cd web && npm run --silent build && npm run --silent build:dev

test-web: $(WEB_MODULES)
	@echo "==> the web app's unit tests"
	cd web && npm test

build:
	@echo "==> building the workspace"
	$(CARGO) build --workspace --bins --locked

fmt-check:
	@echo "==> rustfmt"
	$(CARGO) fmt --all -- --check

clippy:
	@echo "==> clippy"
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

lint: $(MOTO_VENV)/.installed $(DEPLOY_VENV)/.installed
	@echo "==> cfn-lint template.yaml"
	$(MOTO_VENV)/bin/cfn-lint template.yaml
	@echo "==> sam validate --lint"
	SAM_CLI_TELEMETRY=0 $(DEPLOY_VENV)/bin/sam validate --lint --template template.yaml --region $${AWS_REGION:-us-east-1}

test-provision: $(MOTO_VENV)/.installed
	@echo "==> the emulator's resources agree with template.yaml"
	cd localstack && $(MOTO_VENV)/bin/python -m unittest test_provision

test-rust: build venv web $(PROMETHEUS) $(CHROMEDRIVER)
	@echo "==> unit and end-to-end tests (moto on loopback, or AWS_ENDPOINT_URL when set; browser tests in headless Chromium)"
	CHAT_PYTHON=$(MOTO_VENV)/bin/python CHAT_GRPC_PYTHON=$(GRPC_VENV)/bin/python CHAT_PROMETHEUS=$(PROMETHEUS) \
		CHAT_CHROMEDRIVER=$(CHROMEDRIVER) CHAT_WEB_DIR=$(CURDIR)/web/dist-dev CHAT_ARTIFACTS=$(TARGET_DIR)/test-artifacts \
		$(CARGO) test --workspace --locked

test-localstack: build venv $(LOCALSTACK_VENV)/.installed
	@echo "==> the end-to-end suite on LocalStack (in Docker where an engine runs, else host mode with DynamoDB on moto)"
	CHAT_PYTHON=$(MOTO_VENV)/bin/python CHAT_GRPC_PYTHON=$(GRPC_VENV)/bin/python \
		LOCALSTACK_PYTHON=$(LOCALSTACK_VENV)/bin/python CARGO=$(CARGO) bash localstack/test-localstack.sh

# The functions as Lambda runs them: a `bootstrap` per function the template
# names, for provided.al2023, built by cargo-lambda through zig as `sam build`
# does (same target, glibc 2.17 link). `make test` builds the dev profile,
# as `SAM_BUILD_MODE=debug sam build` does: release adds thin LTO and one
# codegen unit, some 10 minutes on 2 cores for what this check proves
# (`make deploy` still builds release). LAMBDA_PROFILE=release builds what
# is deployed (e.g. to compare cold starts, below).
LAMBDA_FUNCTIONS := $(shell sed -n 's/^ *Binary: *//p' template.yaml | sort -u)
LAMBDA_PROFILE ?= dev
build-functions: $(DEPLOY_VENV)/.installed
	@echo "==> cargo lambda build ($(LAMBDA_PROFILE)): $(LAMBDA_FUNCTIONS)"
	rm -f $(foreach f,$(LAMBDA_FUNCTIONS),$(TARGET_DIR)/lambda/$(f)/bootstrap)
	PATH=$(DEPLOY_VENV)/bin:$$PATH $(CARGO) lambda build --locked -p chat-functions \
		$(if $(filter release,$(LAMBDA_PROFILE)),--release) $(addprefix --bin ,$(LAMBDA_FUNCTIONS))
	for f in $(LAMBDA_FUNCTIONS); do \
		b=$(TARGET_DIR)/lambda/$$f/bootstrap; \
		test -x $$b || { echo "no bootstrap built for function $$f" >&2; exit 1; }; \
		glibc=$$(objdump -T $$b | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1); \
		[ "$$(printf '%s\n' "$$glibc" GLIBC_2.34 | sort -V | tail -1)" = GLIBC_2.34 ] \
			|| { echo "function $$f needs $$glibc; provided.al2023 has GLIBC_2.34" >&2; exit 1; }; \
	done

# A cold `make test` spends minutes downloading its Python environments,
# Prometheus, npm packages and Chromium, mostly waiting on the network: they
# are installed in the
# background while the first compile runs (log: $(CACHE_DIR)/prefetch.log).
# Each install is locked, so a step that needs one waits for it, or installs
# it itself if the background install failed; nothing waits when all exist.
PREFETCH := $(MOTO_VENV)/.installed $(GRPC_VENV)/.installed $(LOCALSTACK_VENV)/.installed $(DEPLOY_VENV)/.installed $(PROMETHEUS) \
	$(WEB_MODULES) $(CHROMEDRIVER)
prefetch:
	@mkdir -p $(CACHE_DIR)
	@if [ -n "$$(for f in $(PREFETCH); do [ -e $$f ] || echo $$f; done)" ]; then \
		echo "==> installing Python environments and Prometheus in the background ($(CACHE_DIR)/prefetch.log)"; \
		(MAKEFLAGS= $(MAKE) --no-print-directory CACHE_DIR=$(CACHE_DIR) PYTHON=$(PYTHON) $(PREFETCH) >$(CACHE_DIR)/prefetch.log 2>&1 &); \
	fi

test: prefetch fmt-check clippy lint test-web test-provision test-rust test-localstack build-functions

# The benchmark matrix from release builds: memory bus and the raw tonic
# baseline side by side per user count, then the emulator path with 1, 2 and
# 4 gateways beside the emulator's raw SNS -> SQS capacity. Writes CSV, PNG
# plots and a ratios table into bench/results/. Not part of `make test`
# (which runs a smoke step: tests/tests/bench.rs). BENCH_ARGS passes flags,
# e.g. BENCH_ARGS="--users 50,500 --skip-aws".
BENCH_ARGS ?=
bench: $(MOTO_VENV)/.installed
	$(CARGO) build --release --locked -p chat-gateway -p chat-client -p chat-e2e --bins
	CHAT_PYTHON=$(MOTO_VENV)/bin/python $(TARGET_DIR)/release/bench --out bench/results $(BENCH_ARGS)

# LocalStack in Docker for developers who have an engine: provisioned from
# template.yaml by the ready.d hook; healthy only once that succeeded.
# Endpoint http://127.0.0.1:4566 (AWS_ENDPOINT_URL), any credentials.
localstack:
	docker compose -f localstack/compose.yaml up -d --wait
localstack-down:
	docker compose -f localstack/compose.yaml down

run: $(MOTO_VENV)/.installed build web
	CHAT_PYTHON=$(MOTO_VENV)/bin/python CHAT_BIN_DIR=$(TARGET_DIR)/debug bash localstack/run-local.sh

# AWS: the first deploy asks for the stack's settings (sam deploy --guided)
# and saves them in samconfig.toml; later ones reuse it. Functions are built
# with cargo-lambda and zig from the pinned deployment environment.
SAM := PATH=$(DEPLOY_VENV)/bin:$$PATH SAM_CLI_TELEMETRY=0 $(DEPLOY_VENV)/bin/sam
deploy: $(DEPLOY_VENV)/.installed
	$(SAM) build --beta-features --template template.yaml
	if [ -f samconfig.toml ]; then $(SAM) deploy; \
	else $(SAM) deploy --guided --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM CAPABILITY_AUTO_EXPAND; fi

destroy: $(DEPLOY_VENV)/.installed
	$(SAM) delete

NAME ?= alice
PORT ?= 50051
ROOM ?= room1
chat:
	./chat connect --gateway http://127.0.0.1:$(PORT) --user $(NAME) --conversation $(ROOM) --create

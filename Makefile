# dpipe: `make demo` (set up + run the backfill on a generated archive) and `make test` (set up + every test).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SAMPLE := data/sample
# The dashboard's chart library, Chart.js from the npm registry (inlined into every report.html; never a CDN).
# A file that exists is not fetched again: delete it after changing CHARTJS_VERSION.
CHARTJS_VERSION := 4.6.1
CHARTJS := connectors/dashboard/static/chart.umd.min.js

.PHONY: setup demo test lint bench clean tools browser sdk-image

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "dpipe needs $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed $(CHARTJS)

demo: setup
	$(PY) -m pipelines.generate --output $(SAMPLE) --lines 200000 --days 3
	rm -rf out/demo
	$(PY) -m pipelines.backfill --config templates/jobs/engine.als.yaml \
		--input '$(SAMPLE)/logs/*' --output out/demo
	@echo "dashboard: $(CURDIR)/out/demo/report.html (or: $(PY) -m pipelines.dashboard --output out/demo)"

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint tools browser
	$(PY) -m pytest

# Local streaming servers built with Go from the module proxy into .tools/ (nothing under $$HOME): Beam's
# Prism runner, pinned to the Python SDK's version with dpipe's patches applied (third_party/prism/README.md),
# and Google's in-memory Pub/Sub server (pstest). A binary newer than its patches is not rebuilt: delete
# .tools/bin/prism after changing PRISM_VERSION.
GO ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
PRISM_VERSION := v2.77.0
TOOLS := $(CURDIR)/.tools
GOENV := GOPATH=$(TOOLS)/go GOMODCACHE=$(TOOLS)/go/mod GOCACHE=$(TOOLS)/go/cache GOBIN=$(TOOLS)/bin \
	GOFLAGS=-modcacherw GOTOOLCHAIN=local

tools: .tools/bin/prism .tools/bin/pstest

PRISM_MODULE := github.com/apache/beam/sdks/v2@$(PRISM_VERSION)
PRISM_SRC := $(TOOLS)/src/beam-sdks-$(PRISM_VERSION)

.tools/bin/prism: $(wildcard third_party/prism/*.patch)
	$(GOENV) $(GO) mod download $(PRISM_MODULE)
	rm -rf $(PRISM_SRC) && mkdir -p $(PRISM_SRC)
	cp -r $(TOOLS)/go/mod/$(PRISM_MODULE)/go.mod $(TOOLS)/go/mod/$(PRISM_MODULE)/go.sum \
		$(TOOLS)/go/mod/$(PRISM_MODULE)/go $(PRISM_SRC)/
	chmod -R u+w $(PRISM_SRC)
	cd $(PRISM_SRC) && for patch in $(sort $(abspath $(wildcard third_party/prism/*.patch))); do \
		GIT_CEILING_DIRECTORIES=$(TOOLS)/src git apply -p1 "$$patch" || exit 1; done
	cd $(PRISM_SRC) && $(GOENV) $(GO) build -o $(TOOLS)/bin/prism ./go/cmd/prism

.tools/bin/pstest: tests/servers/pstest/main.go tests/servers/pstest/go.mod tests/servers/pstest/go.sum
	cd tests/servers/pstest && $(GOENV) $(GO) build -o $(TOOLS)/bin/pstest .

$(CHARTJS):
	@command -v npm >/dev/null || { echo "the dashboard's chart library comes from npm: install Node.js"; exit 1; }
	mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent --cache $(TOOLS)/npm/cache chart.js@$(CHARTJS_VERSION) >/dev/null
	tar -xzf $(TOOLS)/npm/chart.js-$(CHARTJS_VERSION).tgz -C $(TOOLS)/npm package/dist/chart.umd.min.js
	mkdir -p $(dir $@) && cp $(TOOLS)/npm/package/dist/chart.umd.min.js $@

# The browser tests' headless Chromium and its driver, from Debian (root, as on CI; skipped once installed).
browser: /usr/bin/chromedriver

/usr/bin/chromedriver:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium chromium-driver

# The SDK harness image for Flink (templates/flink/sdk.Dockerfile): Beam's Python SDK image of the pinned Beam
# version with dpipe installed. Where no Docker daemon answers it builds nothing and fails (exit 2) saying so.
BEAM_VERSION := $(shell sed -n 's/.*"apache-beam\[[^]]*\]==\([^"]*\)".*/\1/p' pyproject.toml)
SDK_IMAGE ?= dpipe-sdk:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

sdk-image:
	@docker info >/dev/null 2>&1 || { echo "make sdk-image: no Docker daemon answers here (docker info failed):" \
		"no image built; run it on a host with Docker (templates/flink/sdk.Dockerfile, runbooks/flink.md)" >&2; exit 2; }
	docker build -f templates/flink/sdk.Dockerfile --build-arg BEAM_VERSION=$(BEAM_VERSION) -t $(SDK_IMAGE) .

bench: setup
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench.backfill

clean:
	rm -rf $(VENV) data out bench/work .pytest_cache .ruff_cache

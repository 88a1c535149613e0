# Strings the tools together; their settings live in pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The install scripts pin torch: 2.13.0 is a CPU build on this project's machines; a looser
# requirement can pull a multi-GB CUDA build. pyproject.toml keeps the honest range for users.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

# make test-vision: torchvision's models, in a venv of their own. torchvision does not import
# beside the pinned CPU torch; this pair (a CUDA build that runs on the CPU, several GB) does.
VISION_VENV  ?= .venv-vision
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1
VISION_STAMP := $(VISION_VENV)/.installed

# make deb: the .deb bundles this torch; DEB_TORCH=none leaves it to the board (a vendor build).
DEB_TORCH ?= $(TORCH)
DEB_OUT   ?= dist

.PHONY: install test test-fast test-vision test-brokers lint demo bench deb clean

$(STAMP): pyproject.toml Makefile
	@# Mosquitto for the tests' broker; systemd-container for the test that boots the package under systemd.
	@if [ "$$(id -u)" = 0 ] && { ! command -v mosquitto >/dev/null 2>&1 || ! command -v systemd-nspawn >/dev/null 2>&1; }; then \
		echo "installing mosquitto and systemd-container (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients systemd-container >/dev/null; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(VISION_STAMP): pyproject.toml Makefile $(STAMP)
	test -x $(VISION_VENV)/bin/python || $(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/pip install -q --disable-pip-version-check $(VISION_TORCH)
	$(VISION_VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(VISION_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not integration"

test-vision: $(VISION_STAMP)
	$(VISION_VENV)/bin/pytest -s -m vision tests/test_torchvision.py

# make test-brokers: the compatibility table's brokers, RabbitMQ's MQTT plugin and ejabberd's MQTT
# service included (apt, as root). The tests run each on private ports; the packages' own system
# services are neither started at install (policy-rc.d) nor left enabled (ejabberd's would take 1883).
test-brokers: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && { [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || [ ! -x /usr/sbin/ejabberdctl ]; }; then \
		echo "installing rabbitmq-server and ejabberd (apt)"; \
		made=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server ejabberd >/dev/null; \
		[ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; \
		rm -f /etc/systemd/system/multi-user.target.wants/ejabberd.service; \
	fi
	$(BIN)/pytest -s -m brokers tests/test_brokers.py

demo: $(STAMP)
	$(BIN)/edgeflow verify --model yolov5s --devices 4 --random-partitions 3
	$(BIN)/edgeflow plan --model yolov5s --cluster paper-4 --compare
	$(BIN)/edgeflow demo --model yolov5s --requests 10

bench: $(STAMP)
	$(BIN)/python bench/plan_quality.py

deb: $(STAMP)
	$(BIN)/python packaging/build_deb.py --torch '$(DEB_TORCH)' --out '$(DEB_OUT)'

clean:
	rm -rf dist $(VENV) $(VISION_VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info

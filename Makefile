# GoChat Appliance. On a fresh Debian / Raspberry Pi OS machine:
#   make run    a broker, the business server and three mock appliances, with a console
#   make test   lint, type-check and run the whole test suite
# Both install what they need first (apt packages, then .venv), and do nothing
# more on later runs unless pyproject.toml changed.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful `pip install`; older than pyproject.toml = reinstall.
STAMP := $(VENV)/.installed

# Run-time and build dependencies from the OS: the broker and its clients, the
# broker's headers (its plugin in broker-plugin/ builds against them), Opus, PortAudio
# headers (PyAudio builds from source against them), a speech synthesiser and sox for
# test audio, ALSA utilities, and what building a wheel needs; systemd (for
# `systemd-analyze verify` of the units) and shellcheck for the tests; Node.js for the
# page's one npm dependency (MQTT.js), Chromium for the browser tests and nginx for the
# test of the deployed page (HTTPS; the tests run their own on loopback ports);
# PostgreSQL, whose throwaway clusters the scale-out tests start as they start Mosquitto.
APT_PACKAGES := mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev libopus0 \
	portaudio19-dev espeak-ng sox alsa-utils python3-venv python3-dev build-essential \
	systemd shellcheck nodejs chromium nginx-light postgresql
# The page's MQTT.js, pinned in web/package-lock.json; its browser bundle is copied
# next to the page (never committed).
WEB_BUNDLE := web/vendor/mqtt.esm.js

.PHONY: help venv system-packages test lint run install clean distclean

help:
	@echo "make run        broker, server and three mock appliances with a console (q stops)"
	@echo "make install    install the appliance on this Pi under systemd (as root)"
	@echo "make test       ruff, mypy, then pytest"
	@echo "make lint       ruff and mypy only"
	@echo "make venv       install apt packages and .venv (done by run/test)"
	@echo "make clean      remove caches and var/dev; distclean also removes .venv"

venv: system-packages $(STAMP) $(WEB_BUNDLE)

# `dpkg -s` also knows removed-but-configured packages, so check the status line.
system-packages:
	@missing=(); \
	for pkg in $(APT_PACKAGES); do \
		dpkg -s "$$pkg" 2>/dev/null | grep -q '^Status: install ok installed' \
			|| missing+=("$$pkg"); \
	done; \
	if (( $${#missing[@]} )); then \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		echo "installing: $${missing[*]}"; \
		$$sudo apt-get update; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$${missing[@]}"; \
	fi

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than 3.11: set PYTHON=python3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Order-only on the interpreter: recreating nothing else just because the venv
# directory's mtime changed.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off \
		-e '.[dev,audio,postgres]'
	@touch $@

# npm: NodeSource's nodejs carries it, Debian's comes as a package of its own.
$(WEB_BUNDLE): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y npm; }
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	install -D -m 0644 web/node_modules/mqtt/dist/mqtt.esm.js $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

run: venv
	scripts/run-dev

# The Pi itself: user, /opt/gochat/venv, /etc/gochat, systemd units. Options, e.g.
#   make install INSTALL_ARGS="--device pi-kitchen --broker broker.lan"
install:
	scripts/install-pi $(INSTALL_ARGS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info var/dev \
		web/node_modules web/vendor broker-plugin/build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

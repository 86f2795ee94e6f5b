# Every target installs what it needs first (idempotent: stamps skip work already done).
# Agents run as users of their own (supervisor/isolation.py) and execute the venv's `gastown` (their
# tools, git's credential helper), so the venv's interpreter must be one every user may run: the
# system's python3 when there is one (a pyenv under /root is not).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KILO   := node_modules/@kilocode/cli-linux-x64/bin/kilo
PYTEST_ARGS ?= -n 3 -q --dist loadgroup

.PHONY: run test bench fuzz deps clean image image-tools pg-tools

deps: $(STAMP) $(KILO)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Not `npm ci`: kilo 7.7.7 lists optional platform packages that do not exist at that version, so
# npm never records them in the lock and `npm ci` calls the lock out of sync. `npm install` with
# the exact pin and the committed lock installs the same two packages and leaves the lock as is.
$(KILO): package.json package-lock.json
	npm install --no-audit --no-fund
	test -x $@ && touch $@

run: deps
	$(VENV)/bin/gastown up

# The per-town image (podman, from the Dockerfile; deploy/podman/build-image): cached after the first
# build (~3 min uncached, seconds cached). `make test` builds it for tests/image.
image-tools:
	deploy/podman/install-tools

image: image-tools
	deploy/podman/build-image

# PostgreSQL's programs from Debian (the worker's store on PostgreSQL; tests/pgserver.py runs its own
# server in a temp dir): no system cluster is created or started.
pg-tools:
	deploy/postgres/install

test: deps image pg-tools
	$(PY) -m pytest $(PYTEST_ARGS)

bench: deps pg-tools
	$(PY) -m bench

# A longer schemathesis run than `make test`'s (not part of it): FUZZ_EXAMPLES examples per
# operation of both servers, in one process; the figures (cases, statuses, 5xx) land in bench/fuzz.json.
FUZZ_EXAMPLES ?= 120
fuzz: deps
	GASTOWN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) GASTOWN_FUZZ_BUDGET_S=3600 GASTOWN_FUZZ_REPORT=bench/fuzz.json \
		$(PY) -m pytest tests/integration/test_schemathesis.py -n 0 -q
	cat bench/fuzz.json

clean:
	rm -rf $(VENV) .venv-supervisord node_modules .pytest_cache .gastown

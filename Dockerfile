# syntax=docker/dockerfile:1
# One image per town: the gastown container runtime (control server + agent supervisor) with the
# pinned kilo CLI.
#   build: docker build -t gastown-runtime .
#   run:   docker run -e GASTOWN_CONTROL_TOKEN=... -p 8080:8080 -v town-data:/workspace \
#            --stop-timeout 330 gastown-runtime
# SIGTERM starts a drain of up to GASTOWN_DRAIN_TIMEOUT_S (300 s): give `docker stop` / Kubernetes'
# terminationGracePeriodSeconds more than that, or agents are killed mid-turn.
# The base images are build arguments so the same file builds here, where no registry is reachable:
# `make image` (deploy/podman/build-image) passes local Debian bases made with mmdebstrap.
# tests/integration/test_dockerfile.py lints this file; tests/image/ builds it with podman and runs it.
ARG NODE_BASE=node:20-bookworm-slim
ARG PYTHON_BASE=python:3.11-slim-bookworm

# --- stage 1: the pinned kilo CLI (package-lock.json fixes version and integrity) ---------------
FROM ${NODE_BASE} AS kilo
# Where TLS is inspected, the build mounts the host's CA bundle and names it here (never baked in).
ARG NODE_EXTRA_CA_CERTS
WORKDIR /opt/kilo
COPY package.json package-lock.json ./
# The wrapper package's postinstall only copies the native binary we take directly: skip scripts.
# `npm install`, not `npm ci`: kilo 7.7.7 lists optional platform packages that do not exist at that
# version, so they are absent from the lock and `npm ci` rejects it; with the exact pin and the lock
# present, `npm install` installs the locked packages and nothing else.
RUN npm install --omit=dev --ignore-scripts --no-audit --no-fund \
 && node_modules/@kilocode/cli-linux-x64/bin/kilo --version

# --- stage 2: the runtime and its dependencies in a venv (copied whole into the final image) -----
FROM ${PYTHON_BASE} AS build
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY gastown ./gastown
COPY supervisor ./supervisor
COPY control_server ./control_server
COPY worker_api ./worker_api
COPY plugin ./plugin
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import control_server.main, plugin.server, worker_api.main" \
 && /opt/venv/bin/gastown --help >/dev/null

# --- stage 3: runtime image -----------------------------------------------------------------------
FROM ${PYTHON_BASE}
# git + ssh for the agents' clones and pushes; tini as PID 1 forwards SIGTERM and reaps the tool
# processes kilo leaves behind. Debian point releases replace exact versions, so the bookworm base
# tag is the pin here (exact apt pins would break rebuilds).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client tini \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -m 0711 /workspace
COPY --from=build /opt/venv /opt/venv
COPY --from=kilo /opt/kilo/node_modules/@kilocode/cli-linux-x64 /opt/kilo/node_modules/@kilocode/cli-linux-x64
# /opt/venv/bin first: `gastown` (and so `gastown plugin`, the MCP server kilo spawns) is on PATH.
ENV PATH=/opt/venv/bin:$PATH \
    GASTOWN_DATA_DIR=/workspace \
    KILO_BIN=/opt/kilo/node_modules/@kilocode/cli-linux-x64/bin/kilo \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# No USER: the runtime starts as root only to run every agent as a uid of its own (util-linux
# `setpriv`, no supplementary groups, no_new_privs; supervisor/isolation.py), so an agent's code can
# read neither the runtime's secrets nor another agent's. As a single non-root user, agents would
# share the runtime's uid and could read its environment.
WORKDIR /workspace
VOLUME ["/workspace"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request as u; p = os.environ.get('GASTOWN_PORT', '8080'); sys.exit(u.urlopen(f'http://127.0.0.1:{p}/alive', timeout=4).status != 200)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gastown", "container"]

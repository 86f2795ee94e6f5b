# syntax=docker/dockerfile:1
# One image per town: the gastown container runtime (control server + supervisor) with the pinned
# kilo CLI. Build: docker build -t gastown-runtime .   Run: see README "Container".

# --- stage 1: the pinned kilo CLI from npm (only the linux-x64 native binary is kept) -----------
FROM node:20-bookworm-slim AS kilo
WORKDIR /opt/kilo
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund \
 && test -x node_modules/@kilocode/cli-linux-x64/bin/kilo \
 && node_modules/@kilocode/cli-linux-x64/bin/kilo --version

# --- stage 2: Python wheels of the runtime -----------------------------------------------------
FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml ./
COPY gastown ./gastown
COPY supervisor ./supervisor
COPY control_server ./control_server
COPY worker_api ./worker_api
COPY plugin ./plugin
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- stage 3: runtime image ----------------------------------------------------------------------
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY --from=kilo /opt/kilo/node_modules/@kilocode/cli-linux-x64 /opt/kilo/node_modules/@kilocode/cli-linux-x64
RUN useradd --create-home --uid 10001 agent \
 && mkdir -p /workspace \
 && chown agent:agent /workspace
ENV GASTOWN_DATA_DIR=/workspace \
    KILO_BIN=/opt/kilo/node_modules/@kilocode/cli-linux-x64/bin/kilo \
    PYTHONUNBUFFERED=1
USER agent
WORKDIR /workspace
VOLUME ["/workspace"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/alive', timeout=4).status == 200 else 1)"
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gastown", "container", "--port", "8080"]

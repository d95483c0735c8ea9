# syntax=docker/dockerfile:1
# cardq worker image: `docker build -t cardq .` (or `make image`, which builds it with buildah)
#   docker run --rm --read-only -v "$PWD/config.yaml:/etc/cardq/config.yaml:ro" -p 9464:9464 cardq
# Two stages: the builder makes a virtual environment in /opt/venv from the pinned, hashed
# lock file; the runtime stage copies it into a clean slim image and runs it as an
# unprivileged user (uid 10001).

ARG PYTHON_VERSION=3.11
# `make image` points this at a local stand-in where no registry can be reached.
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

# --------------------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# /opt/venv is what ships; /opt/build holds the build backend and stays in this stage.
RUN python -m venv /opt/venv \
    && python -m venv /opt/build

WORKDIR /src

# Dependencies first, from the lock files alone: exact versions with their hashes, so two
# builds a month apart install the same files, and this layer is rebuilt only when a lock
# file changes, not on every source change.
COPY requirements.lock requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements-build.lock

# Then the package itself, built by the pinned backend, without touching the dependencies;
# `pip check` fails the build if the lock misses something pyproject.toml asks for.
COPY pyproject.toml README.md ./
COPY worker/ ./worker/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && pip install --no-cache-dir --no-deps /tmp/dist/cardq-*.whl \
    && pip check \
    && python -m compileall -q /opt/venv

# --------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="cardq" \
      org.opencontainers.image.description="Kafka consumer worker that delivers card messages to chat platforms" \
      org.opencontainers.image.source="https://github.com/cardq/cardq" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CARDQ_CONFIG=/etc/cardq/config.yaml

RUN groupadd --system --gid 10001 cardq \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin cardq \
    && mkdir -p /etc/cardq

COPY --from=builder /opt/venv /opt/venv

# Needs a writable /tmp only: the image runs with a read-only root filesystem.
USER 10001:10001
WORKDIR /tmp

# /metrics, /healthz, /readyz (observability.port).
EXPOSE 9464

STOPSIGNAL SIGTERM
ENTRYPOINT ["cardq"]
CMD ["run", "--config", "/etc/cardq/config.yaml"]

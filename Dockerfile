# syntax=docker/dockerfile:1
# cardq worker image: `docker build -t cardq .` then
#   docker run --rm -v "$PWD/config.yaml:/etc/cardq/config.yaml:ro" -p 9464:9464 cardq
# Two stages: the builder makes a virtual environment in /opt/venv; the runtime stage
# copies it into a clean slim image and runs it as an unprivileged user (uid 10001).

ARG PYTHON_VERSION=3.11

# --------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the
# dependency list changes, not on every source change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the package itself, without touching the dependencies again.
COPY README.md ./
COPY worker/ ./worker/
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv

# --------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

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

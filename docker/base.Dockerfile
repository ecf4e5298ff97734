# syntax=docker/dockerfile:1.7
# The base of every service image: the locked runtime dependencies and the project wheel
# in a virtualenv, on python:3.11-slim, running as an unprivileged user. The service
# Dockerfiles (services/*/Dockerfile, loadtest/Dockerfile) add only their HEALTHCHECK and
# CMD. `make images` (infra/tools/ecr.py) builds this once per tag; build context = repo root.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Keep in step with UV_VERSION in the Makefile (tests/infra/test_images.py checks it).
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1
# A compiler only for dependencies without a wheel for this platform; the final image
# never sees it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && pip install "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-dev --no-group infra --no-emit-project --format requirements-txt \
        -o /tmp/requirements.txt \
 && uv venv /opt/venv \
 && uv pip install --python /opt/venv/bin/python --require-hashes -r /tmp/requirements.txt
# Then the project itself, as the same wheel tests/infra/test_images.py installs.
COPY libs ./libs
COPY services ./services
COPY loadtest ./loadtest
RUN uv build --wheel --out-dir /tmp/dist \
 && uv pip install --python /opt/venv/bin/python --no-deps /tmp/dist/*.whl

FROM ${PYTHON_IMAGE} AS runtime
# TLS roots: the system's plus the RDS/DocumentDB CAs, one bundle (infra CA_BUNDLE).
ADD --chmod=644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /tmp/rds.pem
RUN cat /etc/ssl/certs/ca-certificates.crt /tmp/rds.pem > /etc/ssl/certs/chat-ca-bundle.pem \
 && rm /tmp/rds.pem \
 && groupadd --system --gid 10001 chat \
 && useradd --system --uid 10001 --gid chat --no-create-home --shell /usr/sbin/nologin chat \
 && install -d -o chat -g chat -m 0750 /var/lib/chat
COPY --from=builder /opt/venv /opt/venv
# LOCAL_DIR: heartbeats and scratch; ECS mounts a writable volume here (read-only root).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOCAL_DIR=/var/lib/chat \
    LOG_FORMAT=json
WORKDIR /var/lib/chat
USER 10001:10001

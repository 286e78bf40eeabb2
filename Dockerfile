# syntax=docker/dockerfile:1
# One image for every service: `docker run IMAGE api|auth|relay|indexer` (see compose.yaml).
# Only the runtime dependencies, at the versions and hashes uv.lock pins: no dev tools, no
# embedded stand-in servers.
#
# The base is pinned by digest, so a rebuild gets the same Debian and CPython. It is the
# python:3.11-slim digest recorded in docs/deploying.md ("The image"), which also says how
# to refresh it: `docker buildx imagetools inspect python:3.11-slim`, take "Digest:".
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---- builder: the locked dependencies, then the project, into /opt/venv -----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
# uv itself, at the version and with the hashes uv.lock records (as `make` does).
RUN --mount=type=bind,source=uv.lock,target=/tmp/uv.lock \
    --mount=type=bind,source=.ci/uv_requirements.py,target=/tmp/uv_requirements.py \
    python /tmp/uv_requirements.py /tmp/uv.lock > /tmp/uv-requirements.txt \
    && pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/uv-requirements.txt
# The dependencies from the lock alone: this layer is rebuilt only when the lock changes.
# Every dependency ships binary wheels for linux amd64/arm64, so no compiler is needed.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-install-project --no-editable
# Then the source (.dockerignore keeps the context to what the build reads) and the
# project itself, not editable. No `--extra`: the image talks to real servers only.
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-editable \
    && outbox --help > /dev/null

# ---- runtime: the venv on a clean slim base, as a non-root user --------------------------
# Same base as the builder, so the venv's interpreter symlinks stay valid.
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="outbox-pipeline" \
      org.opencontainers.image.description="Transactional outbox from MongoDB to Elasticsearch through Kafka, exactly once." \
      org.opencontainers.image.licenses="Apache-2.0"

# OUTBOX_ENV=prod: secure by default wherever the image runs (compose, Kubernetes, a bare
# `docker run`): a real token secret is required, reflection and /docs are off.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OUTBOX_ENV=prod \
    OUTBOX_LOG_FORMAT=json \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 outbox \
    && useradd --system --uid 10001 --gid outbox --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin outbox

COPY --from=builder /opt/venv /opt/venv

# An empty, root-owned working directory: Settings reads `.env` from here only if one is
# mounted on purpose; configuration normally comes from OUTBOX_* variables and secret files.
WORKDIR /app
USER 10001:10001

# api 8000, auth 50051 (+ metrics 9103), relay metrics 9101, indexer metrics 9102.
EXPOSE 8000 50051 9101 9102 9103

# No HEALTHCHECK here: one image runs four services with four different probes, so each
# probe lives with its service in compose.yaml and deploy/k8s.
ENTRYPOINT ["outbox"]
CMD ["api"]

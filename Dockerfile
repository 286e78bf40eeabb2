# syntax=docker/dockerfile:1
# One image for every service: `docker run IMAGE api|auth|relay|indexer` (see compose.yaml).
# Only the runtime dependencies are installed: no dev tools, no embedded stand-in servers.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: install the project and its dependencies into a venv ----------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore keeps the context to what `pip install .` reads (no .venv, .git, .env, tests).
COPY . .
# Every dependency ships binary wheels for linux amd64/arm64, so no compiler is needed.
# `.` and not `.[dev]` or `.[embedded]`: the image talks to real servers only.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . \
    && outbox --help > /dev/null

# ---- runtime: the venv on a clean slim base, as a non-root user --------------------------
# Same base as the builder, so the venv's interpreter symlinks stay valid.
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="outbox-pipeline" \
      org.opencontainers.image.description="Transactional outbox from MongoDB to Elasticsearch through Kafka, exactly once." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OUTBOX_LOG_FORMAT=json \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 outbox \
    && useradd --system --uid 10001 --gid outbox --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin outbox

COPY --from=builder /opt/venv /opt/venv

# An empty, root-owned working directory: Settings reads `.env` from here only if one is
# mounted on purpose; configuration normally comes from OUTBOX_* variables.
WORKDIR /app
USER 10001:10001

# api 8000, auth 50051, relay metrics 9101, indexer metrics 9102 (the OUTBOX_* defaults).
EXPOSE 8000 50051 9101 9102

# No HEALTHCHECK here: one image runs four services with four different probes, so each
# probe lives with its service in compose.yaml.
ENTRYPOINT ["outbox"]
CMD ["api"]

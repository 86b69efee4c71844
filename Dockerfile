# syntax=docker/dockerfile:1
# One image, three process roles: `api` (default), `worker`, `migrate`
#   docker run IMAGE api | worker | migrate
# Configuration is by PROGRESSION_* environment variables only (docs/PRODUCTION.md).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: resolve and install the pinned dependencies of pyproject.toml into a venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Manifest first so the dependency layer is cached across source-only changes.
COPY pyproject.toml ./
COPY engine ./engine
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY client ./client
COPY launch ./launch
COPY migrations ./migrations
# Runtime dependencies only: no [dev] extra (no pytest, ruff, mypy, test servers).
RUN pip install .

# --- runtime: slim base, the venv, the source tree, a non-root user ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="progression" \
      org.opencontainers.image.description="Governance engine for the model development lifecycle"
# /app holds the complete tree (policies/, migrations/versions/, alembic.ini); it comes first on
# the path so that copy, not the wheel's, is what runs.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PROGRESSION_ENV=production \
    PROGRESSION_DATA_DIR=/data \
    PROGRESSION_API_HOST=0.0.0.0 \
    PROGRESSION_API_PORT=8000 \
    PROGRESSION_POLICIES_DIR=/app/policies \
    PROGRESSION_FEATURES_FILE=/app/policies/features.yaml

RUN groupadd --system --gid 10001 progression \
 && useradd --system --uid 10001 --gid progression --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin progression \
 && mkdir -p /data \
 && chown progression:progression /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Code and policies are owned by root and read-only for the service user.
COPY alembic.ini ./alembic.ini
COPY engine ./engine
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY client ./client
COPY launch ./launch
COPY migrations ./migrations
COPY policies ./policies

USER progression:progression
# Evidence files (content-addressed) live here: a volume shared by the API and the workers.
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "launch.serve", "healthcheck"]

ENTRYPOINT ["python", "-m", "launch.serve"]
CMD ["api"]

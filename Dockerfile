# syntax=docker/dockerfile:1
# nxp2-cds: CDS Hooks service for anti-NXP2 positive JDM.
#   docker build -t nxp2-cds .
#   docker run -p 8080:8080 -v nxp2-cds-data:/var/lib/nxp2-cds \
#     -v "$PWD/site.toml:/etc/nxp2-cds/config.toml:ro" -e NXP2_CDS_CONFIG=/etc/nxp2-cds/config.toml nxp2-cds
# All configuration: NXP2_CDS_* environment variables and the TOML file named by NXP2_CDS_CONFIG.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: the project's wheel and every dependency as wheels -----------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY fhir_mappings ./fhir_mappings
COPY config ./config
COPY examples/patients ./examples/patients
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: the installed wheel, nginx (the front door), a non-root user, nothing else -----------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nxp2-cds" \
      org.opencontainers.image.description="CDS Hooks 2.0 service: refractory disease and GI perforation risk in anti-NXP2 positive JDM" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NXP2_CDS_SERVER__HOST=0.0.0.0 \
    NXP2_CDS_SERVER__PORT=8080 \
    NXP2_CDS_DATABASE_URL=sqlite:////var/lib/nxp2-cds/nxp2-cds.sqlite3 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/nxp2-cds-metrics
# nginx reads each request whole before a worker sees it (`nxp2-cds serve`, docs/deployment.md "Front door"); it
# runs as the service's user with its files in the runtime folder (default /tmp), so its own folders stay unused
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx=1.22.* \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default
RUN groupadd --system --gid 10001 nxp2 \
    && useradd --system --uid 10001 --gid nxp2 --home-dir /var/lib/nxp2-cds --shell /usr/sbin/nologin nxp2 \
    && mkdir -p /var/lib/nxp2-cds /etc/nxp2-cds \
    && chown nxp2:nxp2 /var/lib/nxp2-cds
# the project's own wheel, whatever version pyproject.toml gives, and only the wheels it needs (no layer keeps them)
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/nxp2_cds-*.whl
USER 10001:10001
WORKDIR /var/lib/nxp2-cds
VOLUME ["/var/lib/nxp2-cds"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NXP2_CDS_SERVER__PORT', '8080'), timeout=2)"]
ENTRYPOINT ["nxp2-cds"]
CMD ["serve"]

# The Ekko image: `ekko operator` (the chart's Deployment) and `ekko agent` (the sidecar the
# operator adds to every server pod) from one image. Build: docker build -t ekko:dev .
# Pinned Python patch release and Debian release; bump both deliberately.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- build: wheels for ekko and every dependency, so the runtime stage needs no compiler or index.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ekko ./ekko
RUN pip wheel --wheel-dir /wheels .

# -- runtime
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/home/ekko TMPDIR=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels ekko \
    && groupadd --gid 10001 ekko \
    && useradd --uid 10001 --gid 10001 --home-dir /home/ekko --create-home --shell /usr/sbin/nologin ekko
# Numeric, so runAsNonRoot can verify it; the chart runs the same uid with a read-only root fs.
USER 10001:10001
WORKDIR /home/ekko
# 9300: operator /metrics, 8080: operator /healthz (kopf), 9400: agent HTTP and /metrics.
EXPOSE 9300 8080 9400
ENTRYPOINT ["ekko"]
CMD ["operator", "--all-namespaces"]

# The Ekko image: `ekko operator` (the chart's Deployment) and `ekko agent` (the sidecar the
# operator adds to every server pod) from one image. Build: docker build -t ekko:dev .
# Without Docker, `make image` (e2e/image/build.py) builds the same image with mmdebstrap and
# umoci: keep the two in step (base, packages, venv path, user, entrypoint, environment).
# Pinned Debian release; Debian's python3 is 3.11, so the build stage uses Python 3.11 too.
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- build: wheels for ekko and every dependency, so the runtime stage needs no compiler or index.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ekko ./ekko
RUN pip wheel --wheel-dir /wheels '.[solver]'

# -- runtime: Debian's python3 with libstdc++6 and libgomp1 (numpy and OR-Tools load them), the
# project in a venv at /opt/ekko, a non-root user.
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3 python3-venv libstdc++6 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/*
ENV PATH=/opt/ekko/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/home/ekko TMPDIR=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/ekko \
    && /opt/ekko/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels 'ekko[solver]' \
    && echo 'ekko:x:10001:10001::/home/ekko:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'ekko:x:10001:' >> /etc/group \
    && mkdir -p /home/ekko && chown 10001:10001 /home/ekko
# Numeric, so runAsNonRoot can verify it; the chart runs the same uid with a read-only root fs.
USER 10001:10001
WORKDIR /home/ekko
# 9300: operator /metrics, 8080: operator /healthz (kopf), 9400: agent HTTP and /metrics.
# 9300 operator metrics, 8080 operator health, 9443 admission webhook, 9400 agent, 9500 agent updates
EXPOSE 9300 8080 9443 9400 9500
ENTRYPOINT ["/opt/ekko/bin/ekko"]
CMD ["operator", "--all-namespaces"]

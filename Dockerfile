# recoloop: one image, two commands.
#
#   docker build -t recoloop .
#   docker run --rm -e RECOLOOP_BOOTSTRAP_SERVERS=broker:9092 -v recoloop-data:/var/lib/recoloop recoloop worker
#   docker run --rm -e RECOLOOP_BOOTSTRAP_SERVERS=broker:9092 -p 8080:8080 recoloop serve
#
# Any `recoloop` command runs the same way (`topics apply`, `keys create --site S`, ...).
# Linted by hadolint in the test suite (tests/deploy/test_image.py); not built on our dev
# machine, which has no Docker engine (README, "Containers and Kubernetes").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/recoloop
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
# A regular install into the virtualenv: the contract (app/contract/topic_specs/*.json) is
# package data, so the runtime stage needs the virtualenv only, not this source tree. pip
# compiles what it installs: the root file system is read-only at run time.
RUN /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    RECOLOOP_BIND_HOST=0.0.0.0 \
    RECOLOOP_DATA_DIR=/var/lib/recoloop
RUN groupadd --system --gid 10001 recoloop \
    && useradd --system --uid 10001 --gid recoloop --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin recoloop \
    && mkdir -p /var/lib/recoloop \
    && chown recoloop:recoloop /var/lib/recoloop
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/recoloop/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/recoloop
# RocksDB state of the worker (RECOLOOP_DATA_DIR): keep it across restarts.
VOLUME ["/var/lib/recoloop"]
# The worker's /health and /ready, its /metrics; the rank service (API, /health, /metrics).
EXPOSE 6066 9464 8080
# /health of whichever command runs (Kubernetes uses its own probes instead).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/recoloop/healthcheck.py"]
# Python is PID 1 and handles SIGTERM itself: it finishes or aborts the batch in flight and
# exits 0 (within 30 s; give it a stop timeout of 60 s: docker stop -t 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["recoloop"]
CMD ["worker"]

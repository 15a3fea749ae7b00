# syntax=docker/dockerfile:1
# The serving pod: `python -m handlers.server` on a CUDA runtime. Ships handlers/ and schemas/ only, never the
# control plane. Build from the repository root:
#   docker build -f deploy/docker/pod.Dockerfile -t REGION-docker.pkg.dev/PROJECT/model-release/pod:TAG .
# torch comes from pod-requirements.txt, pinned to the version the test suite runs with (the Makefile's TORCH;
# tests/security/test_deploy_hardening.py keeps the two in step). Its Linux wheels bring the CUDA and cuDNN libraries;
# the GPU driver comes from the node. torch >= 2.6 is required: earlier versions load pickles with
# weights_only=True unsafely (CVE-2025-32434).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY deploy/docker/pod-requirements.txt /tmp/pod-requirements.txt
RUN pip install --no-cache-dir -r /tmp/pod-requirements.txt && rm /tmp/pod-requirements.txt

WORKDIR /app
COPY schemas/ /app/schemas/
COPY handlers/ /app/handlers/

# uid 10001 matches ServingOptions.run_as_user; the root filesystem is mounted read-only in the cluster, so
# HOME and TMPDIR point at the /tmp emptyDir the manifests mount.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app
USER 10001:10001
ENV HOME=/tmp TMPDIR=/tmp PYTHONPATH=/app

EXPOSE 8080
ENTRYPOINT ["python", "-m", "handlers.server"]

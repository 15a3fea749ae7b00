# syntax=docker/dockerfile:1
# The control plane: the `release` command (controller, router + management API, drift monitor). No torch and
# no CUDA: it never loads a model. Build from the repository root:
#   docker build -f deploy/docker/control-plane.Dockerfile -t REGION-docker.pkg.dev/PROJECT/model-release/control-plane:TAG .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/docker/control-plane-requirements.txt ./
RUN pip install --no-cache-dir -r control-plane-requirements.txt
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY release/ release/
COPY monitoring/ monitoring/
COPY functions/ functions/
# --no-deps: the requirements above are the dependencies, minus torch, which only serving pods need.
RUN pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH HOME=/tmp
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["release"]
CMD ["up"]

#!/usr/bin/env bash
# Wheels (with what they need) that the lent GPU machine lacks (its python3 is 3.12 with torch, numpy, aiohttp,
# httpx, uvloop and prometheus-client, but no pod server stack), fetched here into .whl/ for the device tool to carry.
#
#   bash bench/serving/gpu_wheels.sh
#   device run, carry [".whl"]:
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/serving/gpu_bench.py --seconds 6
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --dest .whl --only-binary=:all: \
  --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --implementation cp \
  starlette uvicorn httptools orjson structlog pydantic
ls .whl

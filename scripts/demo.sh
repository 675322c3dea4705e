#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a running server on the offline demo model:
# installs what is missing (Python's venv support, then .venv with the server and the exporter), then runs
#   emotion-server --model demo
# The demo model is a tiny emotion2vec checkpoint with random, UNTRAINED weights (its scores mean nothing),
# built and exported once into the model cache. Then: the page at http://localhost:8000/, gRPC on :50051,
# Prometheus metrics on :9090/metrics. Extra arguments go to emotion-server (e.g. --http-port 8080).
#
# The exporter pins torch==2.13.0; on a plain public package index that pin resolves to a CUDA build of
# several GB. For the CPU wheel set, before running this script:
#   export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "== installing python3-venv (apt)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q >/dev/null
  "${sudo[@]}" apt-get install -y -q --no-install-recommends python3-venv python3-pip >/dev/null
fi
if ! { [ -x .venv/bin/emotion-server ] && .venv/bin/python -c 'import onnxruntime, aiohttp, torch' 2>/dev/null; }; then
  echo "== installing the server and the exporter into .venv (first run only; a few minutes)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e '.[server,export]'
fi
echo "== starting emotion-server --model demo (untrained demo model): open http://localhost:8000/"
exec .venv/bin/emotion-server --model demo "$@"

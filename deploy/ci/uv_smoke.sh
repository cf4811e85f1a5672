#!/usr/bin/env bash
# CI: install the project into a uv-made environment (no setuptools, so no pkg_resources) and run the
# demo's landing and one training there (deploy/ci/uv_smoke.py). The main suite runs in .venv (pip).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m pip install --quiet 'uv>=0.5,<1'
ENV_DIR="$(mktemp -d)/uv-env"
.venv/bin/uv venv --quiet --python "$(.venv/bin/python -c 'import sys; print(sys.executable)')" "$ENV_DIR"
.venv/bin/uv pip install --quiet --python "$ENV_DIR/bin/python" -e .
"$ENV_DIR/bin/python" deploy/ci/uv_smoke.py
rm -rf "$(dirname "$ENV_DIR")"

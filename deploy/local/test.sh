#!/usr/bin/env bash
# Quick start 2: install into .venv (first time) and run the full test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/install.sh
# two workers (pytest-xdist): the modules on Ray in one unit, other modules whole (tests/conftest.py); -n 0: one process
exec .venv/bin/python -m pytest -n "${MLOPS_TEST_WORKERS:-2}" "$@"

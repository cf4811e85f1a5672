#!/usr/bin/env bash
# Quick start 2: install into .venv (first time) and run the full test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/install.sh
exec .venv/bin/python -m pytest "$@"
